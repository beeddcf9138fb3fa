"""A chat request's account, settled exactly once. Before the pipeline runs, admission reserves what one answer may
take against the key's token quota and the tenant's budget (``Admission.reserve``: refused with 429 when they are
used up, counting what requests in flight reserved). The final answer settles the account: its tokens replace the
reservation in the key's count, its cost reaches the audit record and the usage ledger (whose commit releases the
budget's reservation). A stream cut before its final answer (the client closed it, the server shut down, it
failed) is settled with what was generated until then (``RagPipeline.cut``) and recorded with that outcome, never
as an answer that cost nothing: the middleware asks for the cut when it writes the request's audit record
(``Exchange.cut``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from app.api.middleware import current_exchange
from app.container import Services
from serving.contracts.answer import Answer, AnswerRequest, CutOutcome, StreamProgress
from serving.contracts.generation import Replaced
from serving.governance.access import Principal


class MeteredAnswer:
    def __init__(self, services: Services, principal: Principal, request: AnswerRequest) -> None:
        self._services = services
        self._principal = principal
        self._request = request
        self._progress = StreamProgress()
        self._settled = False
        self._lock = threading.Lock()  # the stream's thread settles the answer, the event loop's a cut
        self._reservation = services.admission.reserve(principal)
        self._exchange = current_exchange.get()
        if self._exchange is not None:
            self._exchange.reservation = self._reservation.id
            self._exchange.cut = self.cut

    def answer(self) -> Answer:
        """The final answer, settled (a request without ``stream``)."""
        return self._settle(self._services.pipeline.answer(self._request, self._progress))

    def events(self) -> Iterator[str | Replaced | Answer]:
        """The pipeline's stream; its final answer settled."""
        for event in self._services.pipeline.stream(self._request, self._progress):
            yield self._settle(event) if isinstance(event, Answer) else event

    def cut(self, outcome: CutOutcome) -> None:
        """Settle a stream that ended before its final answer with what it generated until now."""
        self._settle(self._services.pipeline.cut(self._request, self._progress, outcome))

    def _settle(self, answer: Answer) -> Answer:
        with self._lock:
            if self._settled:  # cut first: the client is gone, the account was settled with what it got
                return answer
            self._settled = True
        if self._exchange is not None:
            self._exchange.answer = answer  # for the audit record
        self._services.admission.settle(self._principal, self._reservation, answer.usage.total_tokens)
        return answer
