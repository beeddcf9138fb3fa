"""Reading the audit trail back: a page of records (``read_page``), every record (``export``), and pruning the
chain's old prefix behind a checkpoint (``prune``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from serving.governance.audit import AuditUnavailableError
from serving.governance.audit_chain import AUDIT_LOCK, PAGE, last_checkpoint, verify
from serving.infra.clock import stamp, utc_now
from serving.infra.state_store import Cursor, StateStore


def read_page(
    store: StateStore, since: datetime | None, tenant: str | None, after_seq: int, limit: int
) -> list[dict[str, Any]]:
    """Up to ``limit`` records after ``after_seq`` (oldest first), from ``since`` on and of ``tenant`` when
    given; each its body's fields plus ``prev_hash`` and ``hash``."""
    sql = "SELECT body, prev_hash, hash FROM audit_records WHERE seq > ?"
    params: list[Any] = [after_seq]
    if since is not None:
        sql, params = sql + " AND ts >= ?", [*params, stamp(since)]
    if tenant is not None:
        sql, params = sql + " AND tenant = ?", [*params, tenant]
    with store.transaction() as cur:
        rows = cur.execute(sql + " ORDER BY seq LIMIT ?", [*params, limit])
    return [{**json.loads(row["body"]), "prev_hash": row["prev_hash"], "hash": row["hash"]} for row in rows]


def export(store: StateStore, since: datetime | None = None, tenant: str | None = None) -> Iterator[dict[str, Any]]:
    """Every record from ``since`` on (of ``tenant`` when given), oldest first, read a page at a time."""
    after = 0
    while True:
        page = read_page(store, since, tenant, after, PAGE)
        yield from page
        if len(page) < PAGE:
            return
        after = int(page[-1]["seq"])


class Checkpoint(BaseModel):
    """What a prune removed: the chain now starts after ``seq``, whose hash is kept."""

    seq: int
    hash: str
    pruned_before: str
    records: int
    created_at: str


def prune(store: StateStore, before: datetime) -> Checkpoint | None:
    """Delete the records older than ``before`` (the chain's prefix up to the first record from ``before`` on)
    and keep a checkpoint (the last pruned record's seq and hash) the rest verifies from. None: nothing to
    prune. Refused (``AuditUnavailableError``) when the chain does not verify: pruning would hide the evidence."""
    result = verify(store)
    if not result.ok:
        raise AuditUnavailableError(f"the audit chain does not verify ({result.first_bad}); not pruning")
    with store.transaction(write=True) as cur:
        cur.lock(AUDIT_LOCK)
        start_seq, _ = last_checkpoint(cur)
        last = _last_prunable(cur, stamp(before))
        if last <= start_seq:
            return None
        digest = str(cur.execute("SELECT hash FROM audit_records WHERE seq = ?", (last,))[0]["hash"])
        removed = int(cur.execute("SELECT COUNT(*) AS n FROM audit_records WHERE seq <= ?", (last,))[0]["n"])
        checkpoint = Checkpoint(seq=last, hash=digest, pruned_before=stamp(before), records=removed,
                                created_at=utc_now())  # fmt: skip
        cur.execute(
            "INSERT INTO audit_checkpoints (seq, hash, pruned_before, records, created_at) VALUES (?, ?, ?, ?, ?)",
            (checkpoint.seq, checkpoint.hash, checkpoint.pruned_before, checkpoint.records, checkpoint.created_at),
        )
        cur.execute("DELETE FROM audit_records WHERE seq <= ?", (last,))
    return checkpoint


def _last_prunable(cur: Cursor, before: str) -> int:
    """The last seq of the chain's prefix older than ``before``: replicas' clocks and batches interleave, so it
    ends just before the first record stamped ``before`` or later, not at the last one stamped earlier."""
    first_kept = cur.execute("SELECT MIN(seq) AS seq FROM audit_records WHERE ts >= ?", (before,))[0]["seq"]
    if first_kept is not None:
        return int(first_kept) - 1
    return int(cur.execute("SELECT COALESCE(MAX(seq), 0) AS seq FROM audit_records")[0]["seq"])
