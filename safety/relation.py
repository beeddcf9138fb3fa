"""The relation check of groundedness: is the name or number an answer asserts the one the passage connects to
what was asked, or does another span of the same kind stand in that place?

The commonest RAG hallucination picks the wrong entity from the right passage: "The Declaration was drafted by
Benjamin Franklin" from "drafted by Thomas Jefferson ... and edited by Benjamin Franklin". Every word of it is in
the passage, so word-level support cannot tell; where the words stand can. For each name or number the answer
asserts (not one the question already holds), each of its occurrences in the passages is *placed*: the
IDF-weighted share of the claim's anchor words (the answer sentence's content words and the question's, less
the asserted words) found in the same passage sentence, each discounted by its distance in tokens,
``exp(-distance / DISTANCE_SCALE)``. Every other span of the same kind (number or name) in that passage, which
the answer does not assert and the question does not name, is placed the same way: a competitor. The margin is
the asserted span's best placement over the best of its and its strongest competitor's; 1 when it is the best
placed, near 0 when a competitor sits where the predicate is. An answer with several asserted spans gets its
weakest one's margin: one wrong entity is enough.

Plain rules over tokens, no parser and no model: a few microseconds a passage sentence, on the tokens the
passages' analysis already holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from safety.grounding_text import Passages, PassageSentence, Token, Wording, is_number, stem

DISTANCE_SCALE = 6.0  # tokens; chosen on the calibration range (bench/guards.py --calibrate)


@dataclass(frozen=True)
class RelationCheck:
    """The verdict's explanation: the asserted span judged, the competitor that stood closer to the claim's
    words (None: none did), and the margin in [0, 1]."""

    asserted: str
    competitor: str | None
    margin: float


@dataclass(frozen=True)
class _Placed:
    text: str
    placement: float


def relation_check(said: Wording, asked: Wording, names: set[str], passages: Passages) -> RelationCheck | None:
    """The weakest asserted span's check of sentence ``said`` (``names``: its names and numbers, as
    ``names_and_numbers`` reads them against the passages), asked ``asked``; None when the sentence asserts no
    name or number that the passages hold beyond the question's (nothing to place)."""
    # Only what the passages hold is placed: a name they lack is the ``names`` and ``aligned`` signals' to judge,
    # and a capitalised opener the passages never write ("Initially, ...", "Yes, ...") is no entity.
    asserted = (names - asked.words) & passages.words
    if not asserted:
        return None
    claim = _Claim(passages, _anchors(said, asked, asserted, passages), taken=asserted | asked.words)
    checks = [_check(word, claim) for word in sorted(asserted)]
    return min(checks, key=lambda c: c.margin)


@dataclass
class _Claim:
    """One sentence's claim as the passages' sentences read it: the anchors' positions, the entity spans of a
    sentence, each token's placement and each passage's best competitor, found once for all the words it asserts
    (``taken``: what the answer asserts and the question names, which no competitor may be)."""

    passages: Passages
    anchors: dict[str, float]
    taken: set[str]
    _near: dict[int, list[tuple[int, str]]] = field(default_factory=dict)
    _spans: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    _placements: dict[tuple[int, int], float] = field(default_factory=dict)
    _competitors: dict[tuple[bool, int], _Placed | None] = field(default_factory=dict)

    def near(self, index: int) -> list[tuple[int, str]]:
        if index not in self._near:
            self._near[index] = _anchor_positions(self.passages.tokens(index), self.anchors)
        return self._near[index]

    def spans(self, index: int) -> list[tuple[int, int]]:
        if index not in self._spans:
            self._spans[index] = _spans(self.passages.tokens(index))
        return self._spans[index]

    def placement(self, index: int, position: int) -> float:
        """The placement of passage sentence ``index``'s token at ``position`` (``_placement``)."""
        key = (index, position)
        if key not in self._placements:
            self._placements[key] = _placement(position, self.near(index), self.anchors)
        return self._placements[key]

    def competitor(self, numeric: bool, passage: int) -> _Placed | None:
        """``_best_competitor`` of a number (or a name) in ``passage``: the same for every word this claim asserts."""
        key = (numeric, passage)
        if key not in self._competitors:
            self._competitors[key] = _best_competitor(numeric, self, passage)
        return self._competitors[key]


def _anchors(said: Wording, asked: Wording, asserted: set[str], passages: Passages) -> dict[str, float]:
    """The claim's predicate words, stem -> IDF weight (a word every sentence holds says little)."""
    excluded = {stem(word) for word in asserted}
    stems = (said.stems | asked.stems) - excluded
    rarest = max(passages.idf.values(), default=1.0)
    return {s: passages.idf.get(s, rarest) for s in stems}


def _check(word: str, claim: _Claim) -> RelationCheck:
    best: _Placed | None = None
    best_sentence: PassageSentence | None = None
    for index, sentence in enumerate(claim.passages.sentences):
        if word not in sentence.words:
            continue
        for position, token in enumerate(claim.passages.tokens(index)):
            if token.word == word:
                placed = _Placed(word, claim.placement(index, position))
                if best is None or placed.placement > best.placement:
                    best, best_sentence = placed, sentence
    if best is None or best_sentence is None:  # written otherwise in the tokens than in the words: not placed
        return RelationCheck(asserted=word, competitor=None, margin=1.0)
    rival = claim.competitor(is_number(word), best_sentence.passage)
    if rival is None or rival.placement <= best.placement:
        return RelationCheck(asserted=word, competitor=None, margin=1.0)
    return RelationCheck(asserted=word, competitor=rival.text, margin=round(best.placement / rival.placement, 4))


def _best_competitor(numeric: bool, claim: _Claim, passage: int) -> _Placed | None:
    """The best placed span of the kind (number or name) in ``passage`` that neither the answer nor the question
    holds; a span is a run of entity tokens (a multi-word name competes as one)."""
    best: _Placed | None = None
    for index, sentence in enumerate(claim.passages.sentences):
        if sentence.passage != passage or not sentence.stems & claim.anchors.keys():
            continue  # another passage, or nothing of the claim here: every span in it is placed 0
        tokens = claim.passages.tokens(index)
        for start, end in claim.spans(index):
            span = tokens[start:end]
            if any(t.number for t in span) != numeric or any(t.word in claim.taken for t in span):
                continue
            words = [t.word for t in span]
            placement = max(claim.placement(index, i) for i in range(start, end))
            if best is None or placement > best.placement:
                best = _Placed(" ".join(words), placement)
    return best


def _spans(tokens: tuple[Token, ...]) -> list[tuple[int, int]]:
    """Runs of consecutive entity tokens, as (start, end)."""
    spans, start = [], None
    for i, token in enumerate((*tokens, Token("", "", False, False))):
        if token.entity and start is None:
            start = i
        elif not token.entity and start is not None:
            spans.append((start, i))
            start = None
    return spans


def _anchor_positions(tokens: tuple[Token, ...], anchors: dict[str, float]) -> list[tuple[int, str]]:
    return [(i, token.stem) for i, token in enumerate(tokens) if token.stem in anchors]


def _placement(position: int, near: list[tuple[int, str]], anchors: dict[str, float]) -> float:
    """The IDF-weighted share of the anchors in the sentence, each discounted by its distance from
    ``position`` (the nearest occurrence of each counts once)."""
    total = sum(anchors.values())
    if not total:
        return 0.0
    nearest: dict[str, int] = {}
    for i, anchor in near:
        if i != position:
            distance = abs(i - position)
            nearest[anchor] = min(distance, nearest.get(anchor, distance))
    return sum(anchors[s] * math.exp(-d / DISTANCE_SCALE) for s, d in nearest.items()) / total
