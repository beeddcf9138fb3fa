"""The output guard over a streamed answer, one sentence at a time: a client sees only text that passed it.

Deltas are buffered into sentences (``SentenceSplitter``); each complete sentence goes through the policy's
validators that can change what is shown (redaction, and those whose action is ``fallback`` or ``block``)
before it is released, so personal data never leaves in a delta and an ungrounded sentence is caught before
the client reads it. Checking sentence by sentence loses nothing: groundedness is the minimum over sentences
and the PII, profanity and citation checks look at spans within one. Flag-only validators (citation validity,
which asks whether the answer as a whole cites a passage) judge the whole answer at the end. The verdicts of
the parts merge into one ``GuardVerdict``, the shape the whole-answer guard gave.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from prompts.citations import MARKER
from safety.groundedness import Groundedness
from safety.guards import Guard, GuardAction, GuardVerdict, answer_evidence
from safety.pii import PRIVATE_KEY_BEGIN
from serving.contracts.answer import SPACE_RUN, drop_invalid_citations

# A sentence's end: a terminator, closing quotes or brackets, and the citation markers some models put after it.
_SENTENCE_END = re.compile(rf"[.!?][\"')\]\u00bb\u201d\u2019]*(?:\s*{MARKER})*$")
_MARKERS_AFTER = re.compile(rf"(?:\s+{MARKER})*")  # "Text. [1]": the marker belongs to the sentence before it
_MAYBE_MARKER = re.compile(r"\s*(?:\[[\d,\s]*)?")  # the stream so far could still become a marker
_OPEN_MARKER = re.compile(r"\[[\d,\s]*$")  # a citation marker not closed yet, e.g. "[1, "
# The one PII pattern that spans lines: a private key block is one sentence, or its body would leave unredacted.
_OPEN_KEY_BLOCK = re.compile(rf"{PRIVATE_KEY_BEGIN}(?![\s\S]*-----END)")


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
        for i in range(max(self._scanned, 1), len(buffer)):
            if not (buffer[i].isspace() and buffer[:i].strip() and _ends_sentence(buffer, i)) or _held(buffer, i):
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
    whole answer."""

    sentence: Guard
    answer: Guard

    @classmethod
    def of(cls, guard: Guard) -> SplitGuard:
        per_sentence = [step for step in guard.steps if step.action != "flag"]
        per_answer = [step for step in guard.steps if step.action == "flag"]
        return cls(Guard(guard.name, per_sentence), Guard(guard.name, per_answer))


class SentenceGuard:
    """One answer's stream through the output guard. ``feed`` takes deltas and returns the sentences released
    (redacted, invalid citation markers dropped, the answer's outer whitespace trimmed): joined, they are the
    answer's final text. The first sentence whose verdict is in ``stop_on`` stops the answer: it and everything
    after it are withheld and ``stopped`` holds its verdict. ``guard`` None: sentences are only cleaned.
    ``generator``: whose answer it is."""

    def __init__(
        self, guard: SplitGuard | None, contexts: list[str], stop_on: Collection[GuardAction] = (), generator: str = "",
        question: str = "",
    ) -> None:  # fmt: skip
        self._guard = guard
        self.generator = generator
        self._evidence = answer_evidence(contexts, question)
        self._stop_on = frozenset(stop_on)
        self._splitter = SentenceSplitter()
        self._checked: list[str] = []  # after redaction, before citation cleaning: what flag validators judge
        self._released: list[str] = []
        self._trailing = ""  # whitespace held back from the last piece released
        self.verdict: GuardVerdict | None = None if guard is None else GuardVerdict(action="pass")
        self.stopped: GuardVerdict | None = None

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
        released = self._release([self._splitter.finish().rstrip()])
        if not self.stopped:
            self._check_answer()
        return released

    def _release(self, pieces: list[str]) -> list[str]:
        released = []
        for piece in pieces:
            if not piece.strip():
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
        if self._guard is None:
            return drop_invalid_citations(piece, int(self._evidence["passages"]))
        verdict = self._guard.sentence.check(piece, self._evidence)
        self._checked.append(verdict.text)
        self._merge(verdict)
        if verdict.action in self._stop_on:
            self.stopped = verdict
            self._check_answer()
            return None
        return drop_invalid_citations(verdict.text, int(self._evidence["passages"]))

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
