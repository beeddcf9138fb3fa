"""Prompt-injection and jailbreak detection: instruction-override patterns, and embedding similarity to a
bundled set of known attacks (``guardrails/attacks.jsonl``).

Patterns catch the explicit forms ("ignore previous instructions", "you are DAN", "reveal your system prompt",
"New system message:", ``</passage> SYSTEM:``, the same in French, German, Spanish, Italian and Portuguese) in any
text, and passage-only ones the words a document addresses to the assistant ("AI models processing this page
must ..."). In a passage they name the sentences that carry the instruction (``flag_sentences``), so that the
screen can say which one without quoting it and no sentence picker quotes it. Similarity catches paraphrases and
the long role-play jailbreaks: the text's embedding (the same model as retrieval, so a question's vector is
already in the query cache) is compared with every known attack of a comparable length; the threshold is
calibrated on held-out data (``bench/guards.py``), and a similar text counts only with a cue that it is an attack
(``similarity_cues``). Both look at the text as ``safety.normalise.normalise`` folds it (zero-width characters,
look-alike letters, accents, split lines); the patterns' words also match when split by spaces or hyphens, and
they also run on the folded view (leetspeak, letters spelled apart). A pattern only runs on a text that holds one
of its required literal strings (``safety.prefilter``). ``bench/injection.py`` measures all of it.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import itertools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.chunking import split_sentences
from safety.normalise import fold_obfuscation, normalise, split_tolerant
from safety.prefilter import Prefilter, required_factors

Vectors = np.ndarray[Any, np.dtype[np.float32]]


@dataclass(frozen=True)
class InjectionVerdict:
    detected: bool
    pattern: str | None = None  # the name of the first pattern that matched
    similarity: float | None = None  # the highest cosine to a known attack
    nearest: str | None = None  # the id of that attack
    corroborated: bool = False  # the text also reads as an attack (``InjectionSettings.similarity_cues``)

    @property
    def reason(self) -> str:
        if self.pattern:
            return f"instruction-override pattern: {self.pattern}"
        return f"similar to known attack {self.nearest} (cosine {self.similarity:.2f})"


Rule = tuple[str, str]  # (name, regular expression)
_TERM = re.compile(r"%(\w+)%")


def expand_terms(pattern: str, terms: dict[str, str]) -> str:
    """``%name%`` replaced by the named fragment (which may use fragments defined before it)."""

    def fragment(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in terms:
            raise ValueError(f"unknown term %{name}%")
        return terms[name]

    return _TERM.sub(fragment, pattern)


@dataclass(frozen=True)
class InjectionSettings:
    """``guardrails/injection.yaml``: the patterns, the similarity threshold, and how far apart in length a text
    and a known attack may be for their similarity to count. ``similarity_cues``: what a text similar to a known
    attack must also hold to be refused: similarity alone refuses nothing. ``document_patterns``: for passages
    only (a question may speak to the assistant; a document that does is speaking to whoever reads it)."""

    patterns: list[Rule] = field(default_factory=list)
    similarity_threshold: float = 1.0
    max_length_ratio: float = 10.0
    ignored_attacks: frozenset[str] = frozenset()  # ids in attacks.jsonl that are not attacks on this service
    similarity_cues: list[Rule] = field(default_factory=list)
    document_patterns: list[Rule] = field(default_factory=list)  # passages only: words addressed to the assistant

    @property
    def passage_patterns(self) -> list[Rule]:
        """What retrieved and ingested text is screened with: every pattern, and the passage-only ones."""
        return self.patterns + self.document_patterns

    def applicable(self, attacks: list[dict[str, str]]) -> list[dict[str, str]]:
        return [a for a in attacks if a["id"] not in self.ignored_attacks]


@dataclass(frozen=True)
class SentenceFlag:
    """One sentence of a text that carries instructions: where it is and what matched, never what it says (a
    verdict is shown to callers and logged; the flagged text must not travel with it)."""

    index: int  # the sentence's place in the text, from 0 (``split_sentences``)
    pattern: str  # the name of the first pattern that matched it
    digest: str  # the first 12 hex digits of the sentence's SHA-256, to find it in the document
    words: int

    def describe(self) -> str:
        return f"sentence {self.index + 1} (sha256 {self.digest}, {self.words} words): {self.pattern}"


def _named(patterns: Sequence[str | Rule]) -> list[Rule]:
    return [(p, p) if isinstance(p, str) else p for p in patterns]


_SHARED_FLAGS: dict[tuple[Rule, ...], Callable[[str], tuple[SentenceFlag, ...]]] = {}


@functools.lru_cache(maxsize=1024)
def compiled_pattern(pattern: str, fold: bool) -> re.Pattern[str]:
    """A pattern as it runs: split-tolerant, case-insensitive; ``fold`` for the folded view."""
    return re.compile(split_tolerant(pattern, fold=fold), re.IGNORECASE)


def check_compiles(patterns: Sequence[str | Rule]) -> None:
    """Raise ``re.error`` for a pattern that does not compile (as written, and as it runs)."""
    for _, pattern in _named(patterns):
        compiled_pattern(pattern, False)
        compiled_pattern(pattern, True)


class PatternDetector:
    """The patterns, matched case-insensitively against the normalised text, each word also split by spaces, and
    against its folded view (``safety.normalise.fold_obfuscation``: hyphen-spelled letters, leetspeak)."""

    def __init__(self, patterns: Sequence[str | Rule]) -> None:
        self._rules = _named(patterns)
        # What each pattern needs in a text before it is worth running (``safety.prefilter``); the patterns
        # themselves are compiled when first needed (all of them took 4 s, most are rarely needed).
        factors = [required_factors(p) for _, p in self._rules]
        self._prefilter, self._folded_prefilter = Prefilter(factors), Prefilter(factors, fold=True)
        # Detectors of the same patterns (the ingest flag, the passage screen, the extractive generator's) share
        # what they remember: the first one's screening, cached.
        cached = functools.lru_cache(maxsize=4096)(self.scan)
        self._flags = _SHARED_FLAGS.setdefault(tuple(self._rules), cached)

    def first_match(self, text: str) -> str | None:
        return self.match_normalised(normalise(text))

    def match_normalised(self, normalised: str) -> str | None:
        for view, patterns in self._views(normalised):
            for name, pattern in patterns:
                if pattern.search(view):
                    return name
        return None

    def _views(self, normalised: str) -> list[tuple[str, list[tuple[str, re.Pattern[str]]]]]:
        """The normalised text and its folded view (when it differs), each with the patterns whose required
        factors it holds."""
        views = [(normalised, self._runnable(self._prefilter.candidates(normalised), fold=False))]
        folded = fold_obfuscation(normalised)
        if folded != normalised:
            views.append((folded, self._runnable(self._folded_prefilter.candidates(folded), fold=True)))
        return views

    def _runnable(self, candidates: list[bool], fold: bool) -> list[tuple[str, re.Pattern[str]]]:
        return [
            (name, compiled_pattern(p, fold)) for (name, p), run in zip(self._rules, candidates, strict=True) if run
        ]

    def flag_sentences(self, text: str) -> list[SentenceFlag]:
        """The sentences a pattern matches (a match that runs over several flags each of them), in order. The
        patterns run over the whole normalised text, so that an instruction split over sentences is seen too.
        Remembered for the last few thousand texts: the same passages come back question after question."""
        return list(self._flags(text))

    def scan(self, text: str) -> tuple[SentenceFlag, ...]:
        """``flag_sentences`` without the cache."""
        sentences = split_sentences(text)
        normalised = [normalise(s) for s in sentences]
        joined = " ".join(normalised)
        if not joined or self.match_normalised(joined) is None:  # the common case: one pass, nothing found
            return ()
        ends = list(itertools.accumulate(len(s) + 1 for s in normalised))  # each sentence's end, plus a space
        found: dict[int, str] = {}
        for view, patterns in self._views(joined):
            for name, pattern in patterns:
                for match in pattern.finditer(view):
                    first = bisect.bisect_right(ends, match.start())
                    last = bisect.bisect_right(ends, max(match.start(), match.end() - 1))
                    for index in range(first, min(last, len(sentences) - 1) + 1):
                        found.setdefault(index, name)
        return tuple(
            SentenceFlag(i, found[i], hashlib.sha256(sentences[i].encode()).hexdigest()[:12], len(sentences[i].split()))
            for i in sorted(found)
        )

    def flagged_indices(self, text: str) -> set[int]:
        """The places of the flagged sentences (``split_sentences``' order): what a sentence picker skips."""
        return {flag.index for flag in self._flags(text)}

    def neutralise(self, text: str) -> str:
        """The text with each flagged sentence replaced, so that the rest of a passage can stay as evidence."""
        return without_sentences(text, self.flagged_indices(text))


def without_sentences(text: str, indices: set[int]) -> str:
    """``text`` with the sentences at ``indices`` (``split_sentences``' order) replaced by a marker."""
    if not indices:
        return text
    return " ".join(REMOVED if i in indices else s for i, s in enumerate(split_sentences(text)))


# A sentence of its own (so that it does not run into the next one) of two words (so that no sentence picker,
# which wants three or more, quotes it).
REMOVED = "[instruction removed]."


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
    ratio of 10 costs no detection and halves the false positives (``bench/guards.py``).

    Similarity alone refuses nothing: a text within the threshold of a known attack is one only if it also holds a
    ``similarity_cue`` (it speaks to the assistant, names it or its rules, or asks for harm). Questions that share
    a topic with an attack ("what did the safety audit find?", 0.47 to an attack asking for the system prompt
    "for security audit") are as close as paraphrased attacks are (``bench/injection.py``)."""

    def __init__(
        self,
        patterns: Sequence[str | Rule],
        attacks: list[dict[str, str]],
        embed: Callable[[list[str]], Vectors],
        threshold: float,
        embed_query: Callable[[str], Vectors] | None = None,
        cache_dir: Path | None = None,
        max_length_ratio: float = InjectionSettings.max_length_ratio,
        similarity_cues: Sequence[str | Rule] | None = None,
    ) -> None:
        self.patterns = PatternDetector(patterns)
        # What a similar text must also hold to count as an attack; None: similarity alone decides.
        self.cues = PatternDetector(similarity_cues) if similarity_cues is not None else None
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
        if similarity < self.threshold:
            return InjectionVerdict(False, None, similarity, nearest)
        corroborated = self.cues is None or self.cues.match_normalised(normalised) is not None
        return InjectionVerdict(corroborated, None, similarity, nearest, corroborated)
