"""Prompt-injection and jailbreak detection: instruction-override patterns, and embedding similarity to a
bundled set of known attacks (``guardrails/attacks.jsonl``).

Patterns catch the explicit forms ("ignore previous instructions", "you are DAN", "reveal your system prompt")
in any text, including retrieved passages. Similarity catches paraphrases and the long role-play jailbreaks:
the text's embedding (the same model as retrieval, so a question's vector is already in the query cache) is
compared with every known attack of a comparable length; the threshold is calibrated on held-out data
(``bench/guards.py``). Both look at the text as ``safety.normalise.normalise`` folds it (zero-width characters,
look-alike letters, split lines), and the patterns' words also match when split by spaces.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from safety.normalise import normalise, split_tolerant

Vectors = np.ndarray[Any, np.dtype[np.float32]]


@dataclass(frozen=True)
class InjectionVerdict:
    detected: bool
    pattern: str | None = None  # the first pattern that matched
    similarity: float | None = None  # the highest cosine to a known attack
    nearest: str | None = None  # the id of that attack

    @property
    def reason(self) -> str:
        if self.pattern:
            return f"instruction-override pattern: {self.pattern}"
        return f"similar to known attack {self.nearest} (cosine {self.similarity:.2f})"


@dataclass(frozen=True)
class InjectionSettings:
    """``guardrails/injection.yaml``: the patterns, the similarity threshold, and how far apart in length a text
    and a known attack may be for their similarity to count."""

    patterns: list[str] = field(default_factory=list)
    similarity_threshold: float = 1.0
    max_length_ratio: float = 10.0
    ignored_attacks: frozenset[str] = frozenset()  # ids in attacks.jsonl that are not attacks on this service

    def applicable(self, attacks: list[dict[str, str]]) -> list[dict[str, str]]:
        return [a for a in attacks if a["id"] not in self.ignored_attacks]


class PatternDetector:
    """The patterns, matched case-insensitively against the normalised text, each word also split by spaces."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self._patterns = [(p, re.compile(split_tolerant(p), re.IGNORECASE)) for p in patterns]

    def first_match(self, text: str) -> str | None:
        return self.match_normalised(normalise(text))

    def match_normalised(self, normalised: str) -> str | None:
        for source, pattern in self._patterns:
            if pattern.search(normalised):
                return source
        return None

    def neutralise(self, text: str) -> str:
        """The text with each instruction-like span replaced, so that a passage can stay as evidence. A passage
        that carries one comes back normalised: the span may only be found in that form (a homoglyph in it)."""
        normalised = normalise(text)
        if self.match_normalised(normalised) is None:
            return text
        for _, pattern in self._patterns:
            normalised = pattern.sub("[instruction removed]", normalised)
        return normalised


def load_attacks(path: Path) -> list[dict[str, str]]:
    """``{"id", "text", "source"}`` per line."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def model_id_of(embed: Callable[..., Any]) -> str:
    """The embedding model behind a bound ``embed`` method (it names the cached attack vectors)."""
    return str(getattr(getattr(embed, "__self__", None), "model_id", "unknown"))


# The embedding model reads about 256 word pieces (some 200 words) of a text: a longer text is compared window by
# window, so that an attack after its start is seen too (history turns may hold 20,000 characters).
WINDOW_WORDS = 200
WINDOW_STRIDE = 150


def word_count(text: str) -> int:
    """A text's length as the similarity check compares it: words, up to what the model reads."""
    return min(len(text.split()), WINDOW_WORDS)


def windows(normalised: str) -> list[str]:
    """Overlapping windows of ``WINDOW_WORDS`` words (the text itself when it is shorter)."""
    words = normalised.split()
    if len(words) <= WINDOW_WORDS:
        return [normalised]
    starts = range(0, len(words) - WINDOW_WORDS + WINDOW_STRIDE, WINDOW_STRIDE)
    return [" ".join(words[start : start + WINDOW_WORDS]) for start in starts]


class InjectionDetector:
    """``embed`` maps texts to unit vectors (``embed_query``: one text, through the query cache); the attack
    vectors are embedded once, on first use.

    A known attack counts for a text only when their lengths are within ``max_length_ratio`` of each other: a
    three-word question that shares a persona's name with a 200-word jailbreak ("What is Alpha?" and the
    "Alphabreak" template, cosine 0.55) is close to it only through that one word. On the calibration data the
    ratio of 10 costs no detection and halves the false positives (``bench/guards.py``)."""

    def __init__(
        self,
        patterns: Sequence[str],
        attacks: list[dict[str, str]],
        embed: Callable[[list[str]], Vectors],
        threshold: float,
        embed_query: Callable[[str], Vectors] | None = None,
        cache_dir: Path | None = None,
        max_length_ratio: float = InjectionSettings.max_length_ratio,
    ) -> None:
        self.patterns = PatternDetector(patterns)
        self._attacks = attacks
        self._attack_words = np.array([max(word_count(normalise(a["text"])), 1) for a in attacks], dtype=np.float32)
        self._embed = embed
        self._embed_query = embed_query or (lambda text: embed([text])[0])
        self.threshold = threshold
        self.max_length_ratio = max_length_ratio
        self._cache_dir = cache_dir  # attack vectors are kept there, per (model, attack set)
        self._model_id = model_id_of(embed)
        self._matrix: Vectors | None = None

    def _attack_matrix(self) -> Vectors:
        """Embedding the long jailbreak texts takes seconds: done once per (model, attack set), then loaded.
        One text per call, as questions are embedded: the int8 model quantises a batch's activations together,
        so a text's vector moves with its batch (cosine 0.99 to itself), enough to cross the threshold."""
        if self._matrix is None:
            texts = [normalise(a["text"]) for a in self._attacks]
            key = [self._model_id, "one text per call", texts]
            digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]
            path = self._cache_dir / f"attack-vectors-{digest}.npy" if self._cache_dir else None
            if path is not None and path.exists():
                self._matrix = np.load(path)
            else:
                empty = np.zeros((0, 1), dtype=np.float32)
                self._matrix = np.vstack([self._embed([text]) for text in texts]) if texts else empty
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    np.save(path, self._matrix)
        return self._matrix

    def warm(self) -> None:
        self._attack_matrix()

    def similarity(self, text: str, vector: Vectors | None = None) -> tuple[float, str | None]:
        """The highest cosine between the text (normalised; window by window when long) and a known attack of
        comparable length, and that attack's id. ``vector``: the text's own embedding, if the caller has it."""
        normalised = normalise(text)
        return self._similarity(normalised, vector if normalised == text else None)

    def _similarity(self, normalised: str, vector: Vectors | None) -> tuple[float, str | None]:
        matrix = self._attack_matrix()
        parts = windows(normalised)
        if not len(matrix) or not normalised:
            return 0.0, None
        if len(parts) == 1 and vector is not None:
            queries = vector[None, :]
        else:  # one window per call, as the attacks were embedded (and through the query cache)
            queries = np.vstack([self._embed_query(part) for part in parts])
        lengths = np.array([max(word_count(part), 1) for part in parts], dtype=np.float32)[:, None]
        comparable = np.maximum(lengths / self._attack_words, self._attack_words / lengths) <= self.max_length_ratio
        if not comparable.any():
            return 0.0, None
        scores = np.where(comparable, queries @ matrix.T, -np.inf)
        window, best = np.unravel_index(int(np.argmax(scores)), scores.shape)
        return float(scores[window, best]), self._attacks[int(best)]["id"]

    def check(self, text: str, vector: Vectors | None = None) -> InjectionVerdict:
        normalised = normalise(text)
        pattern = self.patterns.match_normalised(normalised)
        similarity, nearest = self._similarity(normalised, vector if normalised == text else None)
        if pattern:
            return InjectionVerdict(True, pattern, similarity, nearest)
        return InjectionVerdict(similarity >= self.threshold, None, similarity, nearest)
