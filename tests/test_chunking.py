from __future__ import annotations

import itertools

import pytest

from retrieval.chunking import Chunker
from retrieval.documents import Document, Section
from retrieval.embedding import Embedder


def count_words(text: str) -> int:
    """An additive stand-in for a tokenizer: one token a word."""
    return len(text.split())


def words(n: int, start: int = 0) -> str:
    return " ".join(f"w{i}" for i in range(start, start + n))


def test_small_document_is_one_chunk_with_exact_offsets() -> None:
    doc = Document("d", (Section("Hello world. Second sentence."),))
    [chunk] = Chunker(count_words, 50, 10).chunk(doc)
    assert (chunk.text, chunk.start_char, chunk.end_char, chunk.index) == (doc.text, 0, len(doc.text), 0)


def test_chunks_never_cross_sections_and_keep_heading_paths() -> None:
    doc = Document("d", (Section("Alpha text.", ("A",)), Section("Beta text.", ("A", "B"))))
    chunks = Chunker(count_words, 100, 10).chunk(doc)
    assert [(c.text, c.headings) for c in chunks] == [("Alpha text.", ("A",)), ("Beta text.", ("A", "B"))]
    assert all(doc.text[c.start_char : c.end_char] == c.text for c in chunks)
    assert chunks[1].embedding_text == "A > B\nBeta text."


def test_paragraphs_are_packed_up_to_the_budget() -> None:
    paragraphs = [words(10, i * 10) + "." for i in range(6)]  # 10 tokens each
    doc = Document("d", (Section("\n\n".join(paragraphs)),))
    chunks = Chunker(count_words, 30, 0).chunk(doc)
    assert [c.text.count("\n\n") + 1 for c in chunks] == [3, 3]
    assert all(count_words(c.text) <= 30 for c in chunks)


def test_long_paragraph_splits_at_sentences_with_overlap() -> None:
    sentences = [f"Sentence {i} has a few words in it." for i in range(30)]  # 8 tokens each
    doc = Document("d", (Section(" ".join(sentences)),))
    chunker = Chunker(count_words, 50, 16)
    chunks = chunker.chunk(doc)
    assert len(chunks) > 3
    for before, after in itertools.pairwise(chunks):
        assert after.start_char < before.end_char  # overlap
        assert after.start_char > before.start_char  # progress
        overlap = doc.text[after.start_char : before.end_char]
        assert count_words(overlap) <= 16
    assert all(count_words(c.text) <= 50 for c in chunks)
    covered = "".join(doc.text[c.start_char : c.end_char] for c in chunks)
    assert all(s in covered for s in sentences)  # nothing lost
    assert chunks == chunker.chunk(doc)  # deterministic


def test_sentence_longer_than_budget_splits_at_words() -> None:
    doc = Document("d", (Section(words(100)),))
    chunks = Chunker(count_words, 20, 0).chunk(doc)
    assert len(chunks) == 5
    assert " ".join(c.text for c in chunks) == doc.text


def test_budget_counts_model_tokens(embedder: Embedder) -> None:
    doc = Document("d", (Section(" ".join(["Antidisestablishmentarianism is long."] * 80)),))
    chunks = Chunker(embedder.count_tokens, 64, 8).chunk(doc)
    assert all(embedder.count_tokens(c.text) <= 64 for c in chunks)
    assert len(chunks) > 5


def test_overlap_must_be_below_budget() -> None:
    with pytest.raises(ValueError, match="overlap"):
        Chunker(count_words, 10, 10)
