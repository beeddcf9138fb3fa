"""The garbage collector's pauses: timed by generation while started, and the start-up heap frozen out of them."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Histogram

from serving.observe.gc_pauses import CollectorPauses, freeze_startup_heap


def pause_counts(registry: CollectorRegistry) -> dict[str, float]:
    return {
        sample.labels["generation"]: sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "gc_pause_seconds_count"
    }


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram("gc_pause_seconds", "pauses", ["generation"], registry=registry)


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # the test process's heap is the collector's again


def test_each_collection_is_timed_by_generation_while_started(
    registry: CollectorRegistry, histogram: Histogram
) -> None:
    pauses = CollectorPauses(histogram)
    pauses.start()
    pauses.start()  # once only: a second start does not time each pause twice
    try:
        gc.collect(2)
        gc.collect(0)
        counts = pause_counts(registry)
    finally:
        pauses.close()
    assert counts["2"] == 1 and counts["0"] >= 1  # the callback was added once
    gc.collect()
    pauses.close()  # closing twice is harmless
    assert pause_counts(registry)["2"] == 1  # closed: no longer timed


def test_the_start_up_heap_is_frozen_out_of_full_collections(unfrozen: None) -> None:
    long_lived = [{"passage": str(i)} for i in range(10_000)]
    frozen = freeze_startup_heap()
    assert frozen >= len(long_lived) and gc.get_freeze_count() == frozen
    assert all(o is not long_lived for o in gc.get_objects())  # a full collection no longer traverses them
    del long_lived  # still freed by reference counting
