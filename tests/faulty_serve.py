"""``ragops`` with faults injected, for the tests of what the server does when a route fails
(``python -m tests.faulty_serve serve ...``). Everything is real except the one raise: a search whose query
names a fault raises it inside the route; a chat stream whose question has ``fault-midstream`` raises after its
first delta.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

from app.cli import main
from retrieval.index import IndexUnavailableError
from retrieval.search import Searcher
from serving.answering.pipeline import RagPipeline
from serving.contracts.answer import AnswerRequest, StreamProgress

SEARCH_FAULTS: dict[str, Callable[[], Exception]] = {
    "fault-runtime": lambda: RuntimeError("injected fault alice@example.com"),
    "fault-index": lambda: IndexUnavailableError("index is read-only (injected fault)"),
}
STREAM_FAULTS: dict[str, Callable[[], Exception]] = {"fault-midstream": lambda: RuntimeError("injected fault")}


def _raise_named(text: str, faults: dict[str, Callable[[], Exception]]) -> None:
    for name, fault in faults.items():
        if name in text:
            raise fault()


def _inject() -> None:
    search, stream = Searcher.search, RagPipeline.stream

    def failing_search(self: Searcher, query: str, *args: Any, **kwargs: Any) -> Any:
        _raise_named(query, SEARCH_FAULTS)
        return search(self, query, *args, **kwargs)

    def failing_stream(
        self: RagPipeline, request: AnswerRequest, progress: StreamProgress | None = None
    ) -> Iterator[Any]:
        for event in stream(self, request, progress):
            yield event
            _raise_named(request.question, STREAM_FAULTS)

    Searcher.search = failing_search  # type: ignore[method-assign]
    RagPipeline.stream = failing_stream  # type: ignore[method-assign]


if __name__ == "__main__":
    _inject()
    sys.exit(main(sys.argv[1:]))
