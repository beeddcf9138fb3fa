"""The fallback chain: generators in order; a failure moves to the next, and the answer says which generator
produced it and why an earlier one was passed over. A circuit breaker per backend stops calling one that keeps
failing and lets one trial call through after a cool-down."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from collections.abc import Generator as GeneratorType
from dataclasses import dataclass

from serving.contracts.generation import (
    Fallback,
    Generation,
    GenerationRequest,
    Generator,
    GeneratorError,
    Replaced,
    StreamDelta,
    check_output,
)


class CircuitBreaker:
    """Closed: calls pass. After ``failure_threshold`` failures in a row: open for ``cooldown_s``, calls are
    refused. Then half-open: one trial call; success closes it, failure opens it again."""

    def __init__(
        self, failure_threshold: int = 3, cooldown_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._threshold = failure_threshold
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        with self._lock:
            if self._opened_at is None:
                return "closed"
            return "half_open" if self._clock() - self._opened_at >= self._cooldown_s else "open"

    def allow(self) -> bool:
        with self._lock:
            if self._opened_at is None:
                return True
            if self._clock() - self._opened_at < self._cooldown_s or self._trial_running:
                return False
            self._trial_running = True
            return True

    def record_success(self) -> None:
        with self._lock:
            self._failures, self._opened_at, self._trial_running = 0, None, False

    def record_failure(self, trip: bool = False) -> None:
        """One more failure in a row; ``trip``: open now, whatever the count (the backend is known to be down)."""
        with self._lock:
            self._failures += 1
            if trip or self._trial_running or self._failures >= self._threshold:
                self._opened_at = self._clock()
            self._trial_running = False

    def reset(self) -> None:
        """Closed again before the cool-down ends: the backend says it is back (a restarted worker is ready)."""
        self.record_success()


@dataclass(frozen=True)
class ChainResult:
    generation: Generation
    generator: str
    fallback: Fallback | None


@dataclass(frozen=True)
class ChainDelta:
    """A piece of text from ``generator``."""

    text: str
    generator: str = ""


class FallbackChain:
    def __init__(self, generators: Sequence[Generator], failure_threshold: int = 3, cooldown_s: float = 30.0) -> None:
        if not generators:
            raise ValueError("a fallback chain needs at least one generator")
        self.generators = list(generators)
        self.breakers = {g.name: CircuitBreaker(failure_threshold, cooldown_s) for g in generators}

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.generators]

    def generate(self, request: GenerationRequest) -> ChainResult:
        """The whole answer at once: the stream, consumed."""
        for event in self.stream(request):
            if isinstance(event, ChainResult):
                return event
        raise AssertionError("a chain's stream ends with its result or raises")

    def stream(self, request: GenerationRequest) -> GeneratorType[ChainDelta | Replaced | ChainResult, None, None]:
        """Deltas, then the ``ChainResult``. A backend failing before its first token is replaced silently by
        the next; one failing mid-answer is followed by a ``Replaced`` event (the deltas before it are
        withdrawn), then the next backend's whole answer. Closing the stream closes the backend's (llama.cpp
        stops generating)."""
        first_failure: Fallback | None = None
        last_failure: Replaced | None = None
        emitted = False
        for position, generator in enumerate(self.generators):
            if not self._admit(generator, position):
                first_failure = first_failure or Fallback(from_=generator.name, reason="circuit_open")
                continue
            if emitted and last_failure is not None:  # the backend before streamed part of an answer, then failed
                yield last_failure
                emitted = False
            events = generator.stream(request)
            try:
                for event in events:
                    if isinstance(event, StreamDelta):
                        emitted = True
                        yield ChainDelta(event.text, generator.name)
                    else:
                        generation = check_output(event, generator.name)
                        self.breakers[generator.name].record_success()
                        yield ChainResult(generation, generator.name, first_failure)
                        return
            except GeneratorError as exc:
                self.breakers[generator.name].record_failure(trip=exc.kind == "crashed")
                last_failure = Replaced(from_=generator.name, reason=f"{exc.kind}: {exc}", code="generator_failed")
                first_failure = first_failure or Fallback(from_=generator.name, reason=last_failure.reason)
            finally:
                _close(events)
        first = f"{first_failure.from_}: {first_failure.reason}" if first_failure else "none admitted"
        raise GeneratorError("error", f"every generator failed; first: {first}")

    def _admit(self, generator: Generator, position: int) -> bool:
        # The last generator is the deterministic safety net: its breaker never keeps it out.
        return position == len(self.generators) - 1 or self.breakers[generator.name].allow()


def _close(events: Iterator[object]) -> None:
    """Close a backend's stream now, not when it is garbage-collected: llama.cpp's worker stops at its next
    token. (The ``Generator`` protocol promises an iterator; the backends' streams are generators.)"""
    close = getattr(events, "close", None)
    if close is not None:
        close()
