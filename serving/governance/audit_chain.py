"""The audit trail's hash chain: how a record is chained, the chain's head, and verification.

A record's ``body`` is its canonical JSON (sorted keys, compact, ASCII) and its ``hash`` is
sha256(previous record's hash + body), the first record's previous hash being 64 zeros (or, after pruning, the
hash of the last pruned record, kept as a checkpoint). ``audit_head`` holds the last seq and hash; writers lock
it (``cur.lock("audit")``), so replicas sharing one Postgres append to one chain. Anyone can re-check an export
offline: drop ``prev_hash`` and ``hash`` from a line, and the personal fields (``audit_personal.PERSONAL_FIELDS``,
and ``erased_by``) from a line that has ``personal_sha256``, re-serialise canonically, hash.

A record's personal fields are kept beside its body (``serving.governance.audit_personal``): the body holds their
salted digest, which ``verify`` checks them against; an erasure replaces them with keyed hashes and names its own
record in the chain (an ``admin.action`` ``subject.erase``), which ``verify`` checks is there.

The columns beside ``body`` (``ts``, ``tenant``, ``key_id``, which export and prune filter on) must repeat the body;
the usage ledger must be what the records add up to (``serving.governance.audit_usage``); a prune writes a record
into the chain that attests the checkpoint it leaves and carries the pruned records' usage, so a checkpoint written
by hand does not verify. What no check inside the database can see is the whole chain (or its tail) rewritten
consistently: against that, keep the head elsewhere (``ragops audit anchor``, or the server's anchor file) and check
it with ``check_anchor``.

``verify`` re-hashes the chain from its start (or last checkpoint) to its head. Appending is
``serving.governance.audit.append_records``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from serving.governance.audit_personal import ErasedPart, personal_problem, read_personal
from serving.governance.audit_usage import UsageLine, UsageTally, ledger_differences, usage_of
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


TamperKind = Literal["edited", "removed", "inserted", "reordered", "head_mismatch", "usage_mismatch"]
ERASURE_ACTION = "subject.erase"
"""The admin action of an erasure's tombstone: the kind of subject, a keyed hash of its identifier, what each store
removed. Records whose personal fields it replaced name its seq."""


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
    ts: str
    tenant: str | None
    key_id: str | None
    body: str
    personal: str | None
    prev_hash: str
    hash: str


# The columns outside ``body`` that queries filter on (export by tenant and time, prune by time): each must say what
# the hashed body says, or an edit of it would hide records from export or let prune remove them.
_COLUMNS = ("ts", "tenant", "key_id")

PRUNE_ACTION = "audit.prune"


class PruneAttestation(BaseModel):
    """What a prune writes into the chain (its record's ``admin.detail``): where the chain now starts, and the usage
    of every record pruned so far, which the ledger still counts."""

    through_seq: int
    through_hash: str
    records: int
    carried_usage: list[UsageLine] = Field(default_factory=list)


def prune_attestation(fields: dict[str, Any]) -> PruneAttestation | None:
    """The attestation a record carries, if it is a prune's."""
    admin = fields.get("admin")
    if not isinstance(admin, dict) or admin.get("action") != PRUNE_ACTION:
        return None
    try:
        return PruneAttestation.model_validate(admin.get("detail"))
    except ValidationError:
        return None


@dataclass(frozen=True)
class _Snapshot:
    """The head, the last seq and the usage ledger, read in one statement (one snapshot on Postgres too): a writer
    moves the head, adds records and adds to the ledger in one transaction."""

    head_seq: int
    head_hash: str
    last_seq: int
    ledger: list[UsageLine]


def _snapshot(cur: Cursor) -> _Snapshot:
    rows = cur.execute(
        "SELECT h.seq AS head_seq, h.hash AS head_hash, (SELECT MAX(seq) FROM audit_records) AS last_seq, u.day, "
        "u.tenant, u.key_id, u.requests, u.cached, u.prompt_tokens, u.completion_tokens, u.cost_usd "
        "FROM (SELECT 1 AS one) o LEFT JOIN audit_head h ON h.id = 1 LEFT JOIN usage_daily u ON 1 = 1"
    )
    first = rows[0]
    head = (int(first["head_seq"]), str(first["head_hash"])) if first["head_seq"] is not None else (0, GENESIS_HASH)
    ledger = [UsageLine.of_row(row) for row in rows if row["day"] is not None]
    return _Snapshot(head_seq=head[0], head_hash=head[1], last_seq=int(first["last_seq"] or 0), ledger=ledger)


def verify(store: StateStore) -> VerifyResult:
    """Re-hash the chain from its start (or its last checkpoint) and compare with its head: the first record that
    was edited (body, or a column that repeats it), removed, inserted or moved; a head that does not match the last
    record; a checkpoint no prune in the chain attests; a usage ledger the records do not add up to. Records
    appended while it runs are past the snapshot it checks, not an error."""
    with store.transaction() as cur:
        start_seq, start_hash = last_checkpoint(cur)
        snapshot = _snapshot(cur)
    expected_seq, expected_prev, checked = start_seq + 1, start_hash, 0
    usage, attestation, erasures = UsageTally(), None, _Erasures()
    bad: BadRecord | None = None
    for row in _rows_between(store, start_seq, snapshot.head_seq):
        fields = _fields(row.body)
        bad = _check_row(store, row, fields, expected_seq, expected_prev)
        if bad is not None:
            break
        usage.add(usage_of(fields))
        attestation = prune_attestation(fields) or attestation
        erasures.note(row, fields)
        checked, expected_seq, expected_prev = checked + 1, row.seq + 1, row.hash
    if bad is None:
        bad = erasures.unattested()
    if bad is None:
        last_seq = max(expected_seq - 1, snapshot.last_seq)  # records past the head count as the chain's end
        bad = _check_head(last_seq, expected_prev, snapshot.head_seq, snapshot.head_hash)
    if bad is None:
        bad = _check_start(start_seq, start_hash, attestation)
    if bad is None:
        usage.add_all(attestation.carried_usage if attestation is not None else [])
        bad = _check_ledger(snapshot, usage)
    return VerifyResult(ok=bad is None, records=checked, checkpoint_seq=start_seq, head_seq=snapshot.head_seq,
                        head_hash=snapshot.head_hash, first_bad=bad)  # fmt: skip


@dataclass
class _Erasures:
    """The tombstones met on the walk, and the records that name one: each must name a tombstone after it."""

    tombstones: dict[int, set[int]] = field(default_factory=dict)  # tombstone seq -> the seqs it says it erased
    named: dict[int, int] = field(default_factory=dict)  # erased record's seq -> the tombstone seq it names

    def note(self, row: _Row, fields: dict[str, Any]) -> None:
        admin = fields.get("admin")
        if isinstance(admin, dict) and admin.get("action") == ERASURE_ACTION:
            self.tombstones[row.seq] = _erased_seqs(admin.get("detail"))
        part = read_personal(row.personal)
        if isinstance(part, ErasedPart):
            self.named[row.seq] = part.erased_by

    def unattested(self) -> BadRecord | None:
        """The first record erased by no tombstone after it, or by one that does not list it (an erasure forged
        onto a record by pointing it at a real tombstone, or at one appended for the purpose: the anchor of the
        chain's head catches the latter)."""
        for seq, tombstone in sorted(self.named.items()):
            if tombstone <= seq or tombstone not in self.tombstones:
                return BadRecord(seq=seq, kind="edited", reason=f"its personal fields were replaced, naming erasure "
                                 f"record {tombstone}, which is no erasure after it in the chain")  # fmt: skip
            if seq not in self.tombstones[tombstone]:
                return BadRecord(seq=seq, kind="edited", reason=f"its personal fields were replaced, naming erasure "
                                 f"record {tombstone}, which does not list it among the records it erased")  # fmt: skip
        return None


def _erased_seqs(detail: object) -> set[int]:
    """The records an erasure's tombstone says it erased (``detail.erased_seqs``)."""
    seqs = detail.get("erased_seqs") if isinstance(detail, dict) else None
    return {seq for seq in seqs if isinstance(seq, int)} if isinstance(seqs, list) else set()


def _check_start(start_seq: int, start_hash: str, attestation: PruneAttestation | None) -> BadRecord | None:
    """The chain's start must be what the last prune in the chain says it left: a checkpoint written by hand (to
    hide the records before it) has no prune record behind it."""
    attested = (attestation.through_seq, attestation.through_hash) if attestation is not None else (0, GENESIS_HASH)
    if attested == (start_seq, start_hash):
        return None
    if start_seq == 0:
        return BadRecord(seq=attested[0], kind="removed", reason=f"a prune through record {attested[0]} is in the "
                         "chain but its checkpoint was removed")  # fmt: skip
    return BadRecord(seq=start_seq, kind="removed", reason=f"the chain starts after checkpoint {start_seq}, which no "
                     f"prune record in the chain attests: records 1..{start_seq} were removed")  # fmt: skip


def _check_ledger(snapshot: _Snapshot, chained: UsageTally) -> BadRecord | None:
    problems = ledger_differences(snapshot.ledger, chained)
    if not problems:
        return None
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return BadRecord(seq=snapshot.head_seq, kind="usage_mismatch", reason=f"{problems[0]}{more}")


def _fields(body: str) -> dict[str, Any]:
    try:
        fields = json.loads(body)
    except ValueError:
        return {}
    return fields if isinstance(fields, dict) else {}


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
    found = hash_at(store, seq)
    if found == digest:
        return None
    if found is None:
        return BadRecord(seq=seq, kind="removed", reason=f"the anchored record {seq} is gone: the chain's tail was "
                         "removed (or the whole chain rewritten)")  # fmt: skip
    return BadRecord(seq=seq, kind="edited", reason=f"the chain's hash at seq {seq} is not the anchored one: it was "
                     "rewritten")  # fmt: skip


class Anchor(BaseModel):
    """A head kept outside the database (``ragops audit anchor``, or the server's anchor file): the chain must still
    hold this hash at this seq."""

    seq: int = Field(ge=0)
    hash: str = Field(pattern="^[0-9a-f]{64}$")
    ts: str | None = None

    @classmethod
    def parse(cls, text: str) -> Anchor:
        """``SEQ:HASH`` as verify prints it, or a JSON line of the anchor file; ``ValueError`` otherwise."""
        text = text.strip()
        if text.startswith("{"):
            return cls.model_validate_json(text)
        seq, _, digest = text.partition(":")
        if not seq.isdigit():
            raise ValueError(f"an anchor is SEQ:HASH (a seq and 64 hex digits), as verify prints it: {text!r}")
        return cls(seq=int(seq), hash=digest.lower())

    def line(self) -> str:
        return self.model_dump_json(exclude_none=True)


def head(store: StateStore) -> tuple[int, str]:
    """The chain's head now: what an anchor keeps."""
    with store.transaction() as cur:
        return read_head(cur)


def append_anchor(path: Path, anchor: Anchor) -> None:
    """Append ``anchor`` as a JSON line to ``path`` (created 0600), synced to disk: the record of heads an operator
    keeps away from the database (ship the file elsewhere: on the database's disk it only guards against edits
    of the database alone)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (anchor.line() + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _rows_between(store: StateStore, after: int, last: int) -> Iterator[_Row]:
    """The records after seq ``after`` up to ``last``, a page (and a short read transaction) at a time."""
    while True:
        with store.transaction() as cur:
            rows = cur.execute(
                "SELECT seq, ts, tenant, key_id, body, personal, prev_hash, hash FROM audit_records "
                "WHERE seq > ? AND seq <= ? "
                "ORDER BY seq LIMIT ?",
                (after, last, PAGE),
            )
        for row in rows:
            yield _Row(seq=int(row["seq"]), ts=row["ts"], tenant=row["tenant"], key_id=row["key_id"],
                       body=str(row["body"]), personal=row["personal"], prev_hash=str(row["prev_hash"]),
                       hash=str(row["hash"]))  # fmt: skip
        if len(rows) < PAGE:
            return
        after = int(rows[-1]["seq"])


def _check_row(
    store: StateStore, row: _Row, fields: dict[str, Any], expected_seq: int, expected_prev: str
) -> BadRecord | None:
    if row.seq > expected_seq:
        return BadRecord(seq=expected_seq, kind="removed", reason=f"records {expected_seq}..{row.seq - 1} are missing")
    if chain_hash(row.prev_hash, row.body) != row.hash:
        return BadRecord(seq=row.seq, kind="edited", reason="its body does not match its hash")
    for column in _COLUMNS:
        if getattr(row, column) != fields.get(column):
            return BadRecord(seq=row.seq, kind="edited", reason=f"its {column} column ({getattr(row, column)!r}) is "
                             f"not the {column} it was hashed with ({fields.get(column)!r})")  # fmt: skip
    problem = personal_problem(fields, row.personal)
    if problem is not None:
        return BadRecord(seq=row.seq, kind="edited", reason=problem)
    written_as = fields.get("seq") if isinstance(fields.get("seq"), int) else None
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
