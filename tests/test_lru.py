"""The one bounded memo (``retrieval.lru.Lru``) that the embedder, the rerank, the input guard and the
groundedness check keep their recent work in."""

from __future__ import annotations

import functools
import threading

import pytest

from retrieval.lru import Lru


def test_the_least_recently_used_entry_goes_first() -> None:
    memo: Lru[str, int] = Lru(2)
    memo.put("a", 1)
    memo.put("b", 2)
    assert memo.get("a") == 1  # "a" is now the more recent
    memo.put("c", 3)
    assert memo.get("b") is None and memo.get("a") == 1 and memo.get("c") == 3 and len(memo) == 2


def test_a_value_is_made_once_and_then_kept() -> None:
    memo: Lru[str, list[str]] = Lru(4)
    made: list[str] = []

    def make() -> list[str]:
        made.append("x")
        return ["x"]

    assert memo.get_or_make("k", make) is memo.get_or_make("k", make) and made == ["x"]
    memo.clear()
    memo.get_or_make("k", make)
    assert made == ["x", "x"]


def test_an_empty_memo_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Lru(0)


def test_threads_never_push_it_past_its_capacity() -> None:
    memo: Lru[int, int] = Lru(64)

    def fill(offset: int) -> None:
        for i in range(5000):
            memo.get_or_make(offset + i % 300, functools.partial(int, i))

    threads = [threading.Thread(target=fill, args=(n * 1000,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(memo) == 64
