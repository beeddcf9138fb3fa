"""The audit trail's hash chain: how a record is chained, the chain's head, and verification.

A record's ``body`` is its canonical JSON (sorted keys, compact, ASCII) and its ``hash`` is
sha256(previous record's hash + body), the first record's previous hash being 64 zeros (or, after pruning, the
hash of the last pruned record, kept as a checkpoint). ``audit_head`` holds the last seq and hash; writers lock
it (``cur.lock("audit")``), so replicas sharing one Postgres append to one chain. Anyone can re-check an export
offline: drop ``prev_hash`` and ``hash`` from a line, re-serialise canonically, hash.

``verify`` re-hashes the chain from its start (or last checkpoint) to its head; ``check_anchor`` checks it against a
(seq, hash) kept elsewhere. Appending is ``serving.governance.audit.append_records``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from serving.infra.state_store import Cursor, StateStore

GENESIS_HASH = "0" * 64
AUDIT_LOCK = "audit"
PAGE = 1000  # records read per query by verify and export


def chain_hash(prev_hash: str, body: str) -> str:
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def read_head(cur: Cursor) -> tuple[int, str]:
    """The chain's last (seq, hash); (0, genesis) before the first record."""
    rows = cur.execute("SELECT seq, hash FROM audit_head WHERE id = 1")
    return (int(rows[0]["seq"]), str(rows[0]["hash"])) if rows else (0, GENESIS_HASH)


def last_checkpoint(cur: Cursor) -> tuple[int, str]:
    """Where the chain starts: the last prune's (seq, hash); (0, genesis) when never pruned."""
    rows = cur.execute("SELECT seq, hash FROM audit_checkpoints ORDER BY seq DESC LIMIT 1")
    return (int(rows[0]["seq"]), str(rows[0]["hash"])) if rows else (0, GENESIS_HASH)


TamperKind = Literal["edited", "removed", "inserted", "reordered", "head_mismatch"]


class BadRecord(BaseModel):
    seq: int
    kind: TamperKind
    reason: str


class VerifyResult(BaseModel):
    """The chain checked from its start (or last checkpoint) to its head."""

    ok: bool
    records: int = Field(description="Records checked.")
    checkpoint_seq: int = Field(description="The chain starts after this seq (0: never pruned).")
    head_seq: int
    head_hash: str
    first_bad: BadRecord | None = None


@dataclass(frozen=True)
class _Row:
    seq: int
    body: str
    prev_hash: str
    hash: str


def verify(store: StateStore) -> VerifyResult:
    """Re-hash the chain from its start (or its last checkpoint) and compare with its head: the first record that
    was edited, removed, inserted or moved, or a head that does not match the last record. Records appended while
    it runs are past the snapshot it checks, not an error."""
    with store.transaction() as cur:
        start_seq, start_hash = last_checkpoint(cur)
        # One statement, so one snapshot on Postgres too: a writer moves the head and adds records atomically.
        head = cur.execute(
            "SELECT (SELECT seq FROM audit_head WHERE id = 1) AS seq, "
            "(SELECT hash FROM audit_head WHERE id = 1) AS hash, (SELECT MAX(seq) FROM audit_records) AS last_seq"
        )[0]
    head_seq, head_hash = (int(head["seq"]), str(head["hash"])) if head["seq"] is not None else (0, GENESIS_HASH)
    expected_seq, expected_prev, checked = start_seq + 1, start_hash, 0
    for row in _rows_between(store, start_seq, head_seq):
        bad = _check_row(store, row, expected_seq, expected_prev)
        if bad is not None:
            return VerifyResult(ok=False, records=checked, checkpoint_seq=start_seq, head_seq=head_seq,
                                head_hash=head_hash, first_bad=bad)  # fmt: skip
        checked, expected_seq, expected_prev = checked + 1, row.seq + 1, row.hash
    last_seq = max(expected_seq - 1, int(head["last_seq"] or 0))  # records past the head count as the chain's end
    bad = _check_head(last_seq, expected_prev, head_seq, head_hash)
    return VerifyResult(ok=bad is None, records=checked, checkpoint_seq=start_seq, head_seq=head_seq,
                        head_hash=head_hash, first_bad=bad)  # fmt: skip


def hash_at(store: StateStore, seq: int) -> str | None:
    """The chain's hash at ``seq`` (a record's, or a checkpoint's once pruned); None when there is none. An
    operator who kept (seq, hash) elsewhere checks with it that the chain up to there was not rewritten whole."""
    with store.transaction() as cur:
        rows = cur.execute(
            "SELECT hash FROM audit_records WHERE seq = ? UNION ALL SELECT hash FROM audit_checkpoints WHERE seq = ?",
            (seq, seq),
        )
    return str(rows[0]["hash"]) if rows else None


def check_anchor(store: StateStore, seq: int, digest: str) -> BadRecord | None:
    """The chain against a (seq, hash) kept elsewhere: None when it still holds that hash there, else why not.
    ``ValueError`` when ``seq`` was pruned: that anchor can no longer be checked (anchor a newer head)."""
    with store.transaction() as cur:
        pruned_to, _ = last_checkpoint(cur)
    if seq < pruned_to:
        raise ValueError(f"seq {seq} was pruned (the chain now starts after {pruned_to}): anchor a newer head")
    if hash_at(store, seq) == digest:
        return None
    return BadRecord(seq=seq, kind="edited", reason=f"the chain's hash at seq {seq} is not the anchored one: it was "
                     "rewritten")  # fmt: skip


def _rows_between(store: StateStore, after: int, last: int) -> Iterator[_Row]:
    """The records after seq ``after`` up to ``last``, a page (and a short read transaction) at a time."""
    while True:
        with store.transaction() as cur:
            rows = cur.execute(
                "SELECT seq, body, prev_hash, hash FROM audit_records WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                (after, last, PAGE),
            )
        for row in rows:
            yield _Row(int(row["seq"]), str(row["body"]), str(row["prev_hash"]), str(row["hash"]))
        if len(rows) < PAGE:
            return
        after = int(rows[-1]["seq"])


def _check_row(store: StateStore, row: _Row, expected_seq: int, expected_prev: str) -> BadRecord | None:
    if row.seq > expected_seq:
        return BadRecord(seq=expected_seq, kind="removed", reason=f"records {expected_seq}..{row.seq - 1} are missing")
    if chain_hash(row.prev_hash, row.body) != row.hash:
        return BadRecord(seq=row.seq, kind="edited", reason="its body does not match its hash")
    written_as = _body_seq(row.body)
    if written_as != row.seq:
        return _moved(store, row, written_as)
    if row.prev_hash != expected_prev:
        before = f"record {row.seq - 1}" if row.seq - 1 > 0 else "the chain's start"
        return BadRecord(
            seq=max(row.seq - 1, 0),
            kind="edited",
            reason=f"{before} was replaced or edited and re-hashed: record {row.seq} was chained to another hash",
        )
    return None


def _body_seq(body: str) -> int | None:
    try:
        seq = json.loads(body).get("seq")
    except (ValueError, AttributeError):
        return None
    return seq if isinstance(seq, int) else None


def _moved(store: StateStore, row: _Row, written_as: int | None) -> BadRecord:
    """A self-consistent record at another place than it was written for: records before it were inserted (it
    moved up), removed (it moved down, its predecessor is gone) or swapped with it (its predecessor is elsewhere)."""
    where = f"record {row.seq} was written as seq {written_as}"
    if written_as is None or written_as < row.seq:
        return BadRecord(seq=row.seq, kind="inserted", reason=f"{where}: records were inserted before it")
    with store.transaction() as cur:
        predecessor = cur.execute("SELECT seq FROM audit_records WHERE hash = ?", (row.prev_hash,))
    if predecessor:
        return BadRecord(
            seq=row.seq, kind="reordered", reason=f"{where}; the record it follows is at seq {predecessor[0]['seq']}"
        )
    return BadRecord(seq=row.seq, kind="removed", reason=f"{where}: the record before it was removed")


def _check_head(last_seq: int, last_hash: str, head_seq: int, head_hash: str) -> BadRecord | None:
    if (last_seq, last_hash) == (head_seq, head_hash):
        return None
    if last_seq < head_seq:
        reason = f"the head is record {head_seq} but the chain ends at {last_seq}: its tail was removed"
        return BadRecord(seq=last_seq + 1, kind="head_mismatch", reason=reason)
    if last_seq > head_seq:
        reason = f"records {head_seq + 1}..{last_seq} are past the head: appended outside the writer"
        return BadRecord(seq=head_seq + 1, kind="head_mismatch", reason=reason)
    return BadRecord(seq=head_seq, kind="head_mismatch", reason=f"the head's hash is not record {head_seq}'s")
