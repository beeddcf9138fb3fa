"""Unauthenticated refusals, counted rather than recorded one by one: a 401 (no key, or a bad one) and the 429 of
an address out of failed authentications become one audit record per client address, status and minute, with the
count (``AuditLog.refused``). Anyone can send keyless requests: one durable record (and one fsync) each would let
them grow the trail and compete with answers' commits for free. The refusal itself is immediate; its minute's
record is written when the minute has ended (or at shutdown), so a refusal's record may be lost with a crash,
never an answer's.

Per minute at most ``max_clients`` addresses get their own records; the rest are counted together as ``other``."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime

OTHER_CLIENTS = "other"
MAX_CLIENTS_PER_MINUTE = 50


@dataclass(frozen=True)
class RefusalBucket:
    """One client address's refusals of one status in one minute."""

    minute: datetime
    client: str
    status: int


@dataclass(frozen=True)
class RefusalCount:
    bucket: RefusalBucket
    count: int


class RefusalTally:
    def __init__(self, max_clients: int = MAX_CLIENTS_PER_MINUTE) -> None:
        self._max_clients = max_clients
        self._counts: dict[RefusalBucket, int] = {}
        self._clients: dict[datetime, set[str]] = {}
        self._lock = threading.Lock()

    def add(self, client: str, status: int, now: datetime) -> None:
        minute = now.replace(second=0, microsecond=0)
        with self._lock:
            seen = self._clients.setdefault(minute, set())
            if client not in seen and len(seen) >= self._max_clients:
                client = OTHER_CLIENTS
            seen.add(client)
            bucket = RefusalBucket(minute, client, status)
            self._counts[bucket] = self._counts.get(bucket, 0) + 1

    def take(self, now: datetime | None = None) -> list[RefusalCount]:
        """The counts of the minutes that ended before ``now`` (every minute: None), removed from the tally."""
        with self._lock:
            due = [b for b in self._counts if now is None or b.minute < now.replace(second=0, microsecond=0)]
            counts = [(bucket, self._counts.pop(bucket)) for bucket in due]
            for minute in {b.minute for b in due}:
                self._clients.pop(minute, None)
        counts.sort(key=lambda c: (c[0].minute, c[0].client, c[0].status))
        return [RefusalCount(bucket, count) for bucket, count in counts]
