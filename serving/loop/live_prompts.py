"""The server's prompt selector over live labels: which prompt (stable, or the canary for the live share of
users) answers a request. It answers from a snapshot and rebuilds it off the request path once the snapshot is
older than ``label_refresh_s``, so a request never waits for the state store, and a label or share changed by
any replica (or the CLI) is served by this one within about that time.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from prompts.loader import Prompt
from prompts.registry import PromptRef, PromptRegistry, PromptSelector
from serving.infra.background import BackgroundWorker
from serving.loop.canary_control import CanaryBook

if TYPE_CHECKING:
    from serving.observe.metrics import ServiceMetrics

log = logging.getLogger("ragops.labels")


class LivePrompts:
    """The server's prompt selector over live labels and the live canary share (``canaries``). Callable like
    ``PromptSelector``: ``(user) -> Prompt``."""

    def __init__(
        self, registry: PromptRegistry, stable: str, canary: str | None, book: CanaryBook, refresh_s: float,
        metrics: ServiceMetrics | None = None,
    ) -> None:  # fmt: skip
        self._registry = registry
        self._metrics = metrics
        self._stable = PromptRef.parse(stable)
        self._canary = PromptRef.parse(canary) if canary else None
        self._book = book
        self._refresh_s = refresh_s
        self._worker: BackgroundWorker[bool] = BackgroundWorker("ragops-labels", self._refresh_batch, max_pending=1)
        self._selector = self._build()  # at start, in the caller: a bad label stops the server there
        self._built_at = time.monotonic()

    def __call__(self, user: str | None = None) -> Prompt:
        if time.monotonic() - self._built_at > self._refresh_s:
            self._worker.put(True)  # a full queue: a refresh is already on its way
        return self._selector(user)

    def refresh(self) -> None:
        """Rebuild the snapshot now; a store or prompt that fails keeps the previous one (and says so)."""
        try:
            self._selector = self._build()
        except Exception as exc:  # never the request's problem: served from the old one
            log.warning("prompt labels not refreshed", extra={"error": str(exc)[:200]})
        self._built_at = time.monotonic()

    def close(self) -> None:
        self._worker.close()

    def _refresh_batch(self, _: list[bool]) -> None:
        self.refresh()

    def _labelled(self, ref: PromptRef) -> bool:
        """A canary label nobody has set yet is no canary (yet): ``prompts promote NAME V --label canary`` starts
        it on every replica without a restart."""
        return ref.is_version or ref.selector in self._registry.labels(ref.name)

    def _build(self) -> PromptSelector:
        stable = self._registry.resolve(self._stable)
        canary = self._registry.resolve(self._canary) if self._canary and self._labelled(self._canary) else None
        if canary is None or canary.version == stable.version:
            selector = PromptSelector(stable)
        else:
            share = self._book.live_share(stable.name, canary.version, stable.version)
            selector = PromptSelector(stable, canary, share)
        if self._metrics is not None:
            self._metrics.observe_canary_share(stable.name, selector.canary_share if selector.canary else 0.0)
        return selector
