"""Prompt-injection and jailbreak detection: instruction-override patterns, and embedding similarity to a
bundled set of known attacks (``guardrails/attacks.jsonl``).

Patterns catch the explicit forms ("ignore previous instructions", "you are DAN", "reveal your system prompt")
in any text, including retrieved passages. Similarity catches paraphrases and the long role-play jailbreaks:
the text's embedding (the same model as retrieval, so a question's vector is already in the query cache) is
compared with every known attack; the threshold is calibrated on held-out data (``bench/guards.py``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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


class PatternDetector:
    def __init__(self, patterns: Sequence[str]) -> None:
        self._patterns = [(p, re.compile(p, re.IGNORECASE)) for p in patterns]

    def first_match(self, text: str) -> str | None:
        for source, pattern in self._patterns:
            if pattern.search(text):
                return source
        return None

    def neutralise(self, text: str) -> str:
        """The text with each instruction-like span replaced, so that a passage can stay as evidence."""
        for _, pattern in self._patterns:
            text = pattern.sub("[instruction removed]", text)
        return text


def load_attacks(path: Path) -> list[dict[str, str]]:
    """``{"id", "text", "source"}`` per line."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def model_id_of(embed: Callable[..., Any]) -> str:
    """The embedding model behind a bound ``embed`` method (it names the cached attack vectors)."""
    return str(getattr(getattr(embed, "__self__", None), "model_id", "unknown"))


class InjectionDetector:
    """``embed`` maps texts to unit vectors (``embed_query``: one text, through the query cache); the attack
    vectors are embedded once, on first use."""

    def __init__(
        self,
        patterns: Sequence[str],
        attacks: list[dict[str, str]],
        embed: Callable[[list[str]], Vectors],
        threshold: float,
        embed_query: Callable[[str], Vectors] | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.patterns = PatternDetector(patterns)
        self._attacks = attacks
        self._embed = embed
        self._embed_query = embed_query or (lambda text: embed([text])[0])
        self.threshold = threshold
        self._cache_dir = cache_dir  # attack vectors are kept there, per (model, attack set)
        self._model_id = model_id_of(embed)
        self._matrix: Vectors | None = None

    def _attack_matrix(self) -> Vectors:
        """Embedding the long jailbreak texts takes seconds: done once per (model, attack set), then loaded."""
        if self._matrix is None:
            texts = [a["text"] for a in self._attacks]
            digest = hashlib.sha256(json.dumps([self._model_id, texts]).encode()).hexdigest()[:16]
            path = self._cache_dir / f"attack-vectors-{digest}.npy" if self._cache_dir else None
            if path is not None and path.exists():
                self._matrix = np.load(path)
            else:
                self._matrix = self._embed(texts) if texts else np.zeros((0, 1), dtype=np.float32)
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    np.save(path, self._matrix)
        return self._matrix

    def warm(self) -> None:
        self._attack_matrix()

    def similarity(self, text: str, vector: Vectors | None = None) -> tuple[float, str | None]:
        matrix = self._attack_matrix()
        if not len(matrix):
            return 0.0, None
        query = vector if vector is not None else self._embed_query(text)
        scores = matrix @ query
        best = int(np.argmax(scores))
        return float(scores[best]), self._attacks[best]["id"]

    def check(self, text: str, vector: Vectors | None = None) -> InjectionVerdict:
        pattern = self.patterns.first_match(text)
        similarity, nearest = self.similarity(text, vector)
        if pattern:
            return InjectionVerdict(True, pattern, similarity, nearest)
        return InjectionVerdict(similarity >= self.threshold, None, similarity, nearest)
