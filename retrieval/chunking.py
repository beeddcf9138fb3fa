"""Structure-aware chunking.

A chunk never crosses a section (heading) boundary. Inside a section, paragraphs are packed into chunks up to a
token budget; a paragraph over budget is split at sentences, a sentence over budget at words. Consecutive
chunks of a section overlap by up to ``overlap`` tokens of whole sentences, so an answer that straddles a
boundary is still found whole in one chunk. Every chunk's text is an exact slice of the document text, and its
offsets point at it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from retrieval.documents import Chunk, Document

TokenCounter = Callable[[str], int]

_PARAGRAPH = re.compile(r"\S(?:.*?\S)?(?=\n\s*\n|\s*$)", re.DOTALL)
# A sentence ends at . ! or ? (and closing quotes or brackets) before a capital letter, a quote or the end;
# "20 . 8 %" or "e.g. this" do not end one.
_SENTENCE = re.compile(r"\S.*?(?:[.!?][\"')\]]*(?=\s+[A-Z\"'(\[])|$)", re.DOTALL)
_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class _Span:
    start: int
    end: int
    tokens: int


def split_sentences(text: str) -> list[str]:
    return [match.group().strip() for match in _SENTENCE.finditer(text)]


class Chunker:
    def __init__(self, count_tokens: TokenCounter, max_tokens: int = 200, overlap: int = 32) -> None:
        if not 0 <= overlap < max_tokens:
            raise ValueError("overlap must be at least 0 and smaller than max_tokens")
        self._count = count_tokens
        self.max_tokens = max_tokens
        self.overlap = overlap

    def chunk(self, document: Document) -> list[Chunk]:
        chunks: list[Chunk] = []
        offset = 0
        for section in document.sections:
            for start, end in self._pack(self._units(section.text)):
                chunks.append(
                    Chunk(
                        doc_id=document.id,
                        index=len(chunks),
                        text=section.text[start:end],
                        headings=section.headings,
                        start_char=offset + start,
                        end_char=offset + end,
                    )
                )
            offset += len(section.text) + 2  # sections are joined by a blank line in Document.text
        return chunks

    def _units(self, text: str) -> list[_Span]:
        """The largest pieces (paragraph, else sentence, else word window) that fit the budget."""
        units: list[_Span] = []
        for paragraph in _PARAGRAPH.finditer(text):
            tokens = self._count(paragraph.group())
            if tokens <= self.max_tokens:
                units.append(_Span(paragraph.start(), paragraph.end(), tokens))
                continue
            for sentence in _SENTENCE.finditer(text, paragraph.start(), paragraph.end()):
                tokens = self._count(sentence.group())
                if tokens <= self.max_tokens:
                    units.append(_Span(sentence.start(), sentence.end(), tokens))
                else:
                    units.extend(self._word_windows(text, sentence.start(), sentence.end()))
        return units

    def _word_windows(self, text: str, start: int, end: int) -> list[_Span]:
        windows: list[_Span] = []
        window_start, tokens, last_end = -1, 0, start
        for word in _WORD.finditer(text, start, end):
            word_tokens = self._count(word.group())
            if window_start >= 0 and tokens + word_tokens > self.max_tokens:
                windows.append(_Span(window_start, last_end, tokens))
                window_start, tokens = -1, 0
            if window_start < 0:
                window_start = word.start()
            tokens += word_tokens
            last_end = word.end()
        if window_start >= 0:
            windows.append(_Span(window_start, last_end, tokens))
        return windows

    def _pack(self, units: list[_Span]) -> list[tuple[int, int]]:
        """Greedy packing of units into (start, end) ranges, each new range re-using a tail of the last."""
        ranges: list[tuple[int, int]] = []
        current: list[_Span] = []
        for unit in units:
            if current and sum(u.tokens for u in current) + unit.tokens > self.max_tokens:
                ranges.append((current[0].start, current[-1].end))
                current = self._overlap_tail(current, unit.tokens)
            current.append(unit)
        if current:
            ranges.append((current[0].start, current[-1].end))
        return ranges

    def _overlap_tail(self, previous: list[_Span], next_tokens: int) -> list[_Span]:
        """Trailing units of ``previous`` worth at most ``overlap`` tokens that still leave room for the next."""
        tail: list[_Span] = []
        budget = min(self.overlap, self.max_tokens - next_tokens)
        for unit in reversed(previous[1:]):  # never the whole previous chunk: each chunk must advance
            if unit.tokens > budget:
                break
            tail.insert(0, unit)
            budget -= unit.tokens
        return tail
