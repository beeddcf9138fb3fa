"""The abstention step, and its threshold calibrated per collection.

``Abstain`` says the documents do not hold the answer, and calls no model, when no kept passage is close enough
to the question or the closest one was dropped by the screen.

"Close enough" depends on the collection. The best cosine a question reaches is a maximum over the collection's
passages, and a maximum grows with how many there are: questions about nothing in it (the ``OFF_TOPIC_PROBES``)
reach a median best cosine of 0.06 to 0.12 in a collection of five documents, 0.25 in the 144 passages of the qa
corpus and 0.35 in the 1,486 of the sample corpus, where more than half of them pass the global 0.3. Answerable
questions do not rise with it: their lowest best cosine was 0.38 in the small corpora and 0.33 in the qa corpus.
So ``AbstentionCalibration`` measures that chance level once per version of a collection's documents and puts the
collection's threshold ``margin`` above it, never below the global ``abstain_below`` (the small corpora's
answerable questions need no lower one, and a lower one answers more of their unanswerable ones) nor above
``CEILING``. The global threshold is also what a collection with nothing to measure gets (an empty one).

What no threshold on this cosine separates: a question in the collection's own domain that no document answers
("How many employees does Vantrel Glassworks have?", 0.67) scores like answerable ones (0.38 to 0.88); the
small-corpora suites count those false answers, and the output guard and groundedness are what catch them.
"""

from __future__ import annotations

import logging
import statistics
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from retrieval.documents import Hit
from retrieval.embedding_cache import CachedEmbedder
from retrieval.index import Scope
from retrieval.search import Searcher
from serving.answering.stages import Turn
from serving.contracts.answer import Answer
from serving.contracts.generation import NOT_IN_DOCUMENTS
from serving.infra.background import BackgroundWorker

log = logging.getLogger("ragops.abstention")

# Questions about nothing a user's documents are likely to hold, across unrelated fields: the median is taken, so
# a collection that happens to cover two or three of them (an astronomy club's notes) still gets its chance level
# from the rest. Changing them changes every collection's threshold: the small-corpora suites measure it.
OFF_TOPIC_PROBES: tuple[str, ...] = (
    "What is the boiling point of mercury?",
    "Who painted the ceiling of the Sistine Chapel?",
    "How many moons does Neptune have?",
    "What is the capital city of Mongolia?",
    "Which team won the 1966 football World Cup?",
    "How do bees communicate the location of flowers?",
    "What is the half-life of carbon-14?",
    "Who wrote the opera The Magic Flute?",
    "What causes the northern lights?",
    "How deep is the Mariana Trench?",
    "What language is spoken in Brazil?",
    "When did the Roman Empire fall?",
    "What is photosynthesis?",
    "How many strings does a cello have?",
    "Which planet has the longest day?",
    "What is the chemical symbol for tungsten?",
    "Who invented the telephone?",
    "How fast can a cheetah run?",
    "What is the tallest mountain in Africa?",
    "Which element makes up most of the sun?",
    "What year did the Berlin Wall come down?",
    "How is cheese made from milk?",
    "What do pandas eat?",
    "Who discovered penicillin?",
)
CEILING = 0.5  # the most a calibrated threshold may be: 0.5 already abstains on some answerable qa questions


@dataclass(frozen=True)
class Calibration:
    """A collection's abstention threshold and where it came from."""

    threshold: float
    chance: float | None  # the probes' median best cosine in the collection; None: not calibrated (the default)
    version: str  # the collection's documents digest it was measured on


class AbstentionCalibration:
    """The threshold of a (collection, tenant) for its current documents: measured with the probes the first time
    a version is asked for, then kept (the last ``max_scopes`` scopes, one version each). A version is the
    scope's documents digest (``IndexDigest``), so any ingest, update or delete gives a new measurement: made
    right after an ingest through this process (``CalibrationRefresh``, wired in the composition root), else by
    the first request that asks."""

    def __init__(
        self,
        searcher: Searcher,
        embedder: CachedEmbedder,
        *,
        default: float,
        margin: float,
        probes: tuple[str, ...] = OFF_TOPIC_PROBES,
        top_k: int = 4,
        max_scopes: int = 1024,
    ) -> None:
        self._searcher, self._embedder = searcher, embedder
        self.default, self.margin = default, margin
        self._probes, self._top_k, self._max_scopes = probes, top_k, max_scopes
        self._known: OrderedDict[Scope, Calibration] = OrderedDict()
        self._measuring: dict[Scope, threading.Lock] = {}  # one measurement at a time per scope
        self._lock = threading.Lock()

    def for_scope(self, scope: Scope, version: str | None) -> Calibration:
        """The scope's calibration for this version of its documents, measured on first use. One request
        measures; the others asking for the same scope wait for its result (an ingest's first questions arrive
        together, and each measuring alone multiplied the work)."""
        if version is None:
            return Calibration(self.default, None, "")
        known = self._known_for(scope, version)
        if known is not None:
            return known
        with self._lock:
            measuring = self._measuring.setdefault(scope, threading.Lock())
        with measuring:
            known = self._known_for(scope, version)
            if known is not None:
                return known
            try:
                calibration = self._measure(scope, version)
            except Exception:  # a failed measurement never fails the answer: the global threshold, tried again
                log.warning("abstention calibration of %s failed; the global threshold applies", scope, exc_info=True)
                return Calibration(self.default, None, version)
            with self._lock:
                self._known[scope] = calibration
                self._known.move_to_end(scope)
                while len(self._known) > self._max_scopes:
                    evicted, _ = self._known.popitem(last=False)
                    self._measuring.pop(evicted, None)
        return calibration

    def _known_for(self, scope: Scope, version: str) -> Calibration | None:
        with self._lock:
            known = self._known.get(scope)
            if known is None or known.version != version:
                return None
            self._known.move_to_end(scope)
            return known

    def _measure(self, scope: Scope, version: str) -> Calibration:
        reached = [best for probe in self._probes if (best := self._best_cosine(probe, scope)) is not None]
        if not reached:  # an empty collection: nothing to measure, and nothing will be answered from it anyway
            return Calibration(self.default, None, version)
        chance = round(statistics.median(reached), 4)
        return Calibration(round(min(CEILING, max(self.default, chance + self.margin)), 4), chance, version)

    def _best_cosine(self, question: str, scope: Scope) -> float | None:
        hits = self._searcher.search(question, scope, top_k=self._top_k).hits
        if not hits:
            return None
        vectors = self._embedder.embed([hit.embedding_text for hit in hits])
        return float(np.max(vectors @ self._embedder.embed_query(question)))


class CalibrationRefresh:
    """Measures a scope's calibration after its documents change, off the request that changed them: one thread,
    the scopes changed meanwhile measured once each afterwards, at their version then (an API ingest arrives as
    many requests of a few documents; measuring after each was 24 searches apiece, in the ingest's response time).
    A question that comes first measures it itself, and the two share the measurement (``for_scope``)."""

    def __init__(self, calibration: AbstentionCalibration, version: Callable[[Scope], str | None]) -> None:
        self._calibration, self._version = calibration, version
        self._worker: BackgroundWorker[Scope] = BackgroundWorker(
            "abstention-calibration", self._measure, max_pending=1024, batch_size=1024
        )

    def changed(self, scope: Scope) -> None:
        self._worker.put(scope)  # a full queue drops it: the scope's first question measures it then

    def flush(self, wait_s: float) -> bool:
        return self._worker.flush(wait_s)

    def close(self) -> None:
        # What is pending after a few seconds is left: the next start's first question measures it.
        self._worker.close(wait_s=5.0)

    def _measure(self, scopes: list[Scope]) -> None:
        for scope in dict.fromkeys(scopes):  # changed twice while the last one was measured: measured once
            try:
                self._calibration.for_scope(scope, self._version(scope))
            except Exception:  # the worker must not die: the question that needs it measures it
                log.warning("abstention calibration of %s after a change failed", scope, exc_info=True)


class Abstain:
    """When no passage is similar enough to the question, or the passage that held the answer was dropped by the
    screen, say the documents do not hold the answer and call no model. "Similar enough": at least the
    collection's calibrated threshold (``calibration``), or the global one without it."""

    def __init__(
        self,
        embedder: CachedEmbedder,
        threshold: float,
        calibration: AbstentionCalibration | None = None,
        refresh: CalibrationRefresh | None = None,
    ) -> None:
        self._embedder = embedder
        self._threshold = threshold
        self._calibration = calibration
        self._refresh = refresh  # owned here, with the calibration it measures: closed with the pipeline

    def settle(self, wait_s: float) -> bool:
        """Wait up to ``wait_s`` for the measurements after document changes; False if some are still pending."""
        return self._refresh is None or self._refresh.flush(wait_s)

    def close(self) -> None:
        if self._refresh is not None:
            self._refresh.close()

    def threshold(self, turn: Turn) -> float:
        """The request's collection's threshold, for the documents version the answer cache keyed it on."""
        if self._calibration is None:
            return self._threshold
        version = turn.cache_key.index_version if turn.cache_key is not None else None
        return self._calibration.for_scope(turn.request.scope, version).threshold

    def run(self, turn: Turn) -> Answer | None:
        turn.relevance = self._relevance(turn, turn.hits)
        if turn.relevance is not None and turn.relevance >= self.threshold(turn) and not self._answer_was_dropped(turn):
            return None
        return turn.ended("abstained", NOT_IN_DOCUMENTS)

    def _answer_was_dropped(self, turn: Turn) -> bool:
        """The rule: abstain when a dropped passage is at least as close to the question as every kept one. The
        closest passage is the one the answer would come from; once it is gone, what is left is by the same
        measure further from the question, and an answer from it is about something else (the extractive
        generator quoted an unrelated passage). The price: a flagged document silences the questions it is
        closest to, rather than letting something else answer them; the ingest report names it for removal."""
        dropped = self._relevance(turn, turn.dropped)
        if dropped is None:
            return False
        return turn.relevance is None or dropped >= turn.relevance

    def _relevance(self, turn: Turn, hits: list[Hit]) -> float | None:
        """Best cosine between the question and one of ``hits`` (chunk vectors come from the cache)."""
        if not hits:
            return None
        query = turn.query_vector  # set by the cache lookup, which always runs first
        assert query is not None
        vectors = self._embedder.embed([hit.embedding_text for hit in hits])
        return round(float(np.max(vectors @ query)), 4)
