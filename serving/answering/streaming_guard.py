"""The output guard over a streamed answer, one sentence at a time: a client sees only text that passed it.

Deltas are buffered into sentences (``SentenceSplitter``); each complete sentence goes through the policy's
validators that can change what is shown (redaction, and those whose action is ``fallback`` or ``block``)
before it is released, so personal data never leaves in a delta and an ungrounded sentence is caught before
the client reads it. Checking sentence by sentence loses nothing: groundedness is the minimum over sentences
and the PII, profanity and citation checks look at spans within one. Flag-only validators (citation validity,
which asks whether the answer as a whole cites a passage) judge the whole answer at the end. The verdicts of
the parts merge into one ``GuardVerdict``, the shape the whole-answer guard gave.

A sentence that cites a passage and passes is checked against that passage alone: when the groundedness score
found it restating a sentence of the cited passage, nothing more is done (the common case, free); otherwise it
is scored against the cited passage alone, then each other shown one. A marker that points at a passage which
does not support it is moved to the shown passage that does, and a sentence no single passage supports fails
the groundedness step, which withdraws the answer.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from prompts.citations import CITATION, MARKER, cited_numbers
from safety.groundedness import Groundedness, GroundednessBackend, answer_sentences, is_abstention
from safety.guards import GROUNDEDNESS_CHECK, Guard, GuardAction, GuardStep, GuardVerdict, answer_evidence
from safety.pii import PRIVATE_KEY_BEGIN
from safety.validators import Grounded
from serving.contracts.answer import SPACE_RUN, CitationCheck, drop_invalid_citations

_CLOSERS = "\"')\\]\u00bb\u201d\u2019"  # closing quotes and brackets, escaped for a [character class]
# A sentence's end: a terminator, closers, and the citation markers some models put after it.
_SENTENCE_END = re.compile(rf"[.!?][{_CLOSERS}]*(?:\s*{MARKER})*$")
# Where a cut may fall: whitespace after what ends a sentence's match (a terminator, a closer, a marker's "]"),
# or a newline. Only these are checked against the patterns, which read the text from its start.
_CUT_CANDIDATE = re.compile(rf"(?<=[.!?{_CLOSERS}])\s|\n")
_TEXT = re.compile(r"\S")
_MARKERS_AFTER = re.compile(rf"(?:\s+{MARKER})*")  # "Text. [1]": the marker belongs to the sentence before it
_MAYBE_MARKER = re.compile(r"\s*(?:\[[\d,\s]*)?")  # the stream so far could still become a marker
_OPEN_MARKER = re.compile(r"\[[\d,\s]*$")  # a citation marker not closed yet, e.g. "[1, "
# The one PII pattern that spans lines: a private key block is one sentence, or its body would leave unredacted.
_OPEN_KEY_BLOCK = re.compile(rf"{PRIVATE_KEY_BEGIN}(?![\s\S]*-----END)")
UNCITABLE = "groundedness: a cited sentence is supported by no single passage"


class SentenceSplitter:
    """Cuts streamed text into sentences as they complete. A sentence ends at ``.``, ``!`` or ``?`` (with the
    closing quotes, brackets and citation markers after it) followed by whitespace, or at a newline; never
    inside a citation marker's brackets. The cut falls before the whitespace, so no piece but the last ends with
    it; the pieces joined are the text. A sentence is released once the next one starts (one token later), so a
    marker after its full stop (``Text. [1]``) stays with it."""

    def __init__(self) -> None:
        self._buffer = ""
        self._scanned = 0  # no cut before this position of the buffer

    def feed(self, delta: str) -> list[str]:
        """The sentences ``delta`` completes."""
        self._buffer += delta
        pieces = []
        while (cut := self._next_cut()) is not None:
            pieces.append(self._buffer[:cut])
            self._buffer, self._scanned = self._buffer[cut:], 0
        return pieces

    def finish(self) -> str:
        """What is left when the stream ends: the last sentence, which needs no terminator."""
        rest, self._buffer, self._scanned = self._buffer, "", 0
        return rest

    def _next_cut(self) -> int | None:
        buffer = self._buffer
        text = _TEXT.search(buffer)  # no cut before the sentence has any text
        if text is None:
            return None
        for candidate in _CUT_CANDIDATE.finditer(buffer, max(self._scanned, text.start() + 1)):
            i = candidate.start()
            if not _ends_sentence(buffer, i) or _held(buffer, i):
                continue
            end = _MARKERS_AFTER.match(buffer, i).end()  # type: ignore[union-attr]  # (matches the empty string)
            if _MAYBE_MARKER.fullmatch(buffer, end):  # what follows could still be this sentence's marker
                self._scanned = i
                return None
            return end
        self._scanned = len(buffer)
        return None


def _held(text: str, position: int) -> bool:
    """Inside a citation marker, or a private key block, at ``position``: no cut there."""
    return bool(_OPEN_MARKER.search(text, 0, position) or _OPEN_KEY_BLOCK.search(text, 0, position))


def _ends_sentence(text: str, whitespace_at: int) -> bool:
    return text[whitespace_at] == "\n" or _SENTENCE_END.search(text, 0, whitespace_at) is not None


@dataclass(frozen=True)
class SplitGuard:
    """One output policy, split: the validators checked on every sentence, and the flag-only ones checked on the
    whole answer; ``grounding``, the policy's groundedness step, whose backend also checks citations."""

    sentence: Guard
    answer: Guard
    grounding: GuardStep | None = None

    @classmethod
    def of(cls, guard: Guard) -> SplitGuard:
        per_sentence = [step for step in guard.steps if step.action != "flag"]
        per_answer = [step for step in guard.steps if step.action == "flag"]
        grounding = next((step for step in guard.steps if step.kind == GROUNDEDNESS_CHECK), None)
        return cls(Guard(guard.name, per_sentence), Guard(guard.name, per_answer), grounding)

    @property
    def backend(self) -> GroundednessBackend | None:
        """The groundedness step's backend, or None without one."""
        validator = self.grounding.validator if self.grounding is not None else None
        return validator.scorer if isinstance(validator, Grounded) else None


class SentenceGuard:
    """One answer's stream through the output guard. ``feed`` takes deltas and returns the sentences released
    (redacted, citation markers checked against their passage, invalid ones dropped, the answer's outer whitespace
    trimmed): joined, they are the answer's final text. The first sentence whose verdict is in ``stop_on`` stops
    the answer: it and everything after it are withheld and ``stopped`` holds its verdict. ``guard`` None:
    sentences are only cleaned. ``generator``: whose answer it is."""

    def __init__(
        self, guard: SplitGuard | None, contexts: list[str], stop_on: Collection[GuardAction] = (), generator: str = "",
        question: str = "",
    ) -> None:  # fmt: skip
        self._guard = guard
        self.generator = generator
        self._contexts, self._question = contexts, question
        self._evidence = answer_evidence(contexts, question)
        self._stop_on = frozenset(stop_on)
        self._splitter = SentenceSplitter()
        self._checked: list[str] = []  # after redaction, before citation cleaning: what flag validators judge
        self._released: list[str] = []
        self._trailing = ""  # whitespace held back from the last piece released
        self._carried = ""  # a piece that claims nothing, waiting to be checked with the next
        self.verdict: GuardVerdict | None = None if guard is None else GuardVerdict(action="pass")
        self.stopped: GuardVerdict | None = None
        self.citations = CitationCheck()

    @property
    def text(self) -> str:
        """Everything released so far."""
        return "".join(self._released)

    def feed(self, delta: str) -> list[str]:
        return [] if self.stopped else self._release(self._splitter.feed(delta))

    def finish(self) -> list[str]:
        """The last sentence, then the whole-answer checks."""
        if self.stopped:
            return []
        released = self._release([self._splitter.finish().rstrip()], last=True)
        if not self.stopped:
            self._check_answer()
        return released

    def _release(self, pieces: list[str], last: bool = False) -> list[str]:
        released = []
        for i, piece in enumerate(pieces):
            piece, self._carried = self._carried + piece, ""
            if not piece.strip():
                continue
            if not (last and i == len(pieces) - 1) and not answer_sentences(piece) and not is_abstention(piece):
                # "No." or "Sorry." claims nothing alone (a lone one scores 0): it goes with the next sentence.
                self._carried = piece
                continue
            checked = self._check(piece)
            if checked is None:
                break
            # Whitespace at a piece's end (a dropped marker leaves some) waits for the next piece: the whole
            # answer's cleaning collapses it with that piece's leading spaces, or trims it at the answer's end.
            text = SPACE_RUN.sub(" ", self._trailing + checked)
            kept = text.rstrip()
            self._trailing, text = text[len(kept) :], kept if self._released else kept.lstrip()
            if text:
                self._released.append(text)
                released.append(text)
        return released

    def _check(self, piece: str) -> str | None:
        """The piece as it may be shown, or None when its verdict stops the answer."""
        passages = int(self._evidence["passages"])
        if self._guard is None:
            return drop_invalid_citations(piece, passages)
        verdict = self._guard.sentence.check(piece, self._evidence)
        grounded = verdict.groundedness
        text = verdict.text
        if verdict.action not in self._stop_on and grounded is not None and grounded.score is not None:
            text = self._check_citations(text, verdict)  # a claim the guard lets through: does its passage hold it?
        self._checked.append(text)
        self._merge(verdict)
        if verdict.action in self._stop_on:
            self.stopped = verdict
            self._check_answer()
            return None
        return drop_invalid_citations(text, passages)

    def _check_citations(self, text: str, verdict: GuardVerdict) -> str:
        """The sentence with its citation moved to the passage that supports it alone, when the one it cites does
        not; a sentence no single passage supports fires the groundedness step (its action withdraws it).

        On the hot path nothing is scored again: a sentence citing the passage its groundedness score found it
        restating is supported by that passage. Only a sentence citing another one is scored per passage."""
        grounding = self._guard.grounding if self._guard is not None else None
        backend = self._guard.backend if self._guard is not None else None
        if backend is None or grounding is None or not CITATION.search(text):
            return text
        shown = range(1, len(self._contexts) + 1)
        cited = [n for n in dict.fromkeys(cited_numbers(text)) if n in shown]
        moved = 0
        if not (cited and (_restates(verdict, cited, backend.threshold) or self._supports(backend, text, cited))):
            supporting = [(score, n) for n in shown if n not in cited if (score := self._support(backend, text, n))]
            if supporting:
                text, moved = _cite_instead(text, max(supporting)[1]), 1
            else:
                verdict.fire(grounding.name, grounding.action, UNCITABLE, kind=grounding.kind)
        self.citations = CitationCheck(checked=self.citations.checked + 1, moved=self.citations.moved + moved)
        return text

    def _supports(self, backend: GroundednessBackend, text: str, numbers: list[int]) -> bool:
        result = backend.score(text, [self._contexts[n - 1] for n in numbers], question=self._question)
        return result.score is not None and result.score >= backend.threshold

    def _support(self, backend: GroundednessBackend, text: str, number: int) -> float:
        """The support of ``text`` by passage ``number`` alone; 0 below the threshold."""
        score = backend.score(text, [self._contexts[number - 1]], question=self._question).score
        return score if score is not None and score >= backend.threshold else 0.0

    def _check_answer(self) -> None:
        if self._guard is not None and self._guard.answer.steps:
            self._merge(self._guard.answer.check("".join(self._checked), self._evidence))

    def _merge(self, part: GuardVerdict) -> None:
        merged = self.verdict
        assert merged is not None
        for fired in part.fired:
            if fired not in merged.fired:  # the same finding in two sentences is reported once
                merged.fire(fired.validator, fired.action, fired.reason, kind=fired.kind)  # type: ignore[arg-type]
        merged.latency_ms += part.latency_ms
        merged.groundedness = lowest(merged.groundedness, part.groundedness)
        if part.similarity is not None:
            merged.similarity = max(merged.similarity or 0.0, part.similarity)
        merged.text = "".join(self._checked)


def _restates(verdict: GuardVerdict, cited: list[int], threshold: float) -> bool:
    """Every claim of the sentence is supported and restates a sentence of a cited passage (the offline scorer
    says which; a backend that does not leaves it to scoring)."""
    supports = verdict.groundedness.sentences if verdict.groundedness is not None else []
    return bool(supports) and all(
        s.support >= threshold and s.passage is not None and s.passage + 1 in cited for s in supports
    )


def _cite_instead(text: str, number: int) -> str:
    """The sentence citing passage ``number``: its last marker rewritten, the others dropped."""
    last = list(CITATION.finditer(text))[-1]
    return SPACE_RUN.sub(" ", CITATION.sub("", text[: last.start()]) + f"[{number}]" + text[last.end() :])


def lowest(a: Groundedness | None, b: Groundedness | None) -> Groundedness | None:
    """Two parts' groundedness as one answer's: the least supported sentence of either, all unsupported ones."""
    if a is None or b is None:
        return a or b
    scores = [s for s in (a.score, b.score) if s is not None]
    return Groundedness(
        score=min(scores) if scores else None,
        unsupported=[*a.unsupported, *b.unsupported],
        sentences=[*a.sentences, *b.sentences],
    )
