"""The key ledger: what happened to each key, outside the database, so that a restore cannot undo it.

Every key made, revoked, or cut short by a rotation is one JSON line appended to a file beside the SQLite state
store (``state.keys.jsonl`` next to ``state.sqlite``), mode 0600, fsynced inside the key's transaction, before
it commits: a failed append fails the change (a 503, not a revocation the ledger misses). The file is never in a
backup archive; ``ragops backup restore`` reads it to re-apply the revocations made after the backup and to
check each restored key's terms (``serving.governance.key_restore``). A made key's line holds its secret's
hash, so the ledger is as private as the database.

Postgres keeps no ledger: replicas on several hosts share no file, and ``pg_dump``/``pg_restore`` are the
operator's own tools (a ``pg_restore`` brings back the keys of its dump as they were).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from serving.governance.access import Role
from serving.infra.private_files import fsync_dir, open_private
from serving.infra.state_store import StateStoreUnavailableError

if TYPE_CHECKING:
    from serving.infra.state_store import StateStore

LEDGER_SUFFIX = ".keys.jsonl"

LedgerEvent = Literal["made", "revoked", "cut_short"]


class KeyTerms(BaseModel):
    """What never changes about a key once it is made (no command or route changes it): a restored key that
    differs was edited."""

    model_config = ConfigDict(frozen=True)

    tenant: str
    role: Role
    secret_hash: str
    requests_per_minute: int | None = None  # None: the role's
    tokens_per_day: int | None = None

    def differences(self, other: KeyTerms) -> list[str]:
        """The names of the terms that differ (never their values: one is a secret's hash)."""
        return [name for name in KeyTerms.model_fields if getattr(self, name) != getattr(other, name)]


class LedgerEntry(BaseModel):
    """One line of the ledger. ``at``: when the key was made or revoked, or (cut_short) the expiry a rotation
    gave it; ``expires_at`` and ``terms`` come with ``made``."""

    model_config = ConfigDict(frozen=True)

    event: LedgerEvent
    key_id: str
    at: str
    expires_at: str | None = None
    terms: KeyTerms | None = None


@dataclass(frozen=True, kw_only=True)
class KeyHistory:
    """The ledger read back: per key id, its terms when made, and the earliest time it stopped working."""

    terms: dict[str, KeyTerms] = field(default_factory=dict)
    revoked: dict[str, str] = field(default_factory=dict)  # the earliest revocation
    ends: dict[str, str] = field(default_factory=dict)  # the earliest expiry: as made, or cut short by a rotation
    unreadable: int = 0  # lines that do not parse (a crash while appending leaves at most a torn last one)


class KeyLedger:
    """The ledger file of a SQLite state store; ``path`` None (Postgres): nothing is written or read."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    @classmethod
    def beside(cls, store: StateStore) -> KeyLedger:
        return cls(ledger_path(store.sqlite_path) if store.sqlite_path is not None else None)

    def made(self, key_id: str, at: str, expires_at: str | None, terms: KeyTerms) -> None:
        self._append(LedgerEntry(event="made", key_id=key_id, at=at, expires_at=expires_at, terms=terms))

    def revoked(self, key_id: str, at: str) -> None:
        self._append(LedgerEntry(event="revoked", key_id=key_id, at=at))

    def cut_short(self, key_id: str, expires_at: str) -> None:
        self._append(LedgerEntry(event="cut_short", key_id=key_id, at=expires_at))

    def read(self) -> KeyHistory:
        text = self.path.read_text(errors="replace") if self.path is not None and self.path.exists() else ""
        lines = [line for line in text.splitlines() if line.strip()]
        entries = [entry for line in lines if (entry := _entry(line)) is not None]
        history = KeyHistory(unreadable=len(lines) - len(entries))
        for entry in entries:
            _note(history, entry)
        return history

    def _append(self, entry: LedgerEntry) -> None:
        """One line, written whole and fsynced; a file left without a final newline (a torn write) gets one
        first, so the torn line stays alone. The disk refusing is the state store's 503."""
        if self.path is None:
            return
        line = (entry.model_dump_json(exclude_none=True) + "\n").encode()
        try:
            descriptor = open_private(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
            try:
                size = os.fstat(descriptor).st_size
                torn = size > 0 and os.pread(descriptor, 1, size - 1) != b"\n"
                data = b"\n" + line if torn else line
                if os.write(descriptor, data) != len(data):
                    raise OSError(f"short write to {self.path}")
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            if size == 0:
                fsync_dir(self.path.parent)  # a new file: its name must survive a power cut too
        except OSError as exc:
            raise StateStoreUnavailableError(f"key ledger {self.path}: {exc}") from exc


def ledger_path(state_path: Path) -> Path:
    """The ledger beside the SQLite file ``state_path``: ``state.sqlite`` -> ``state.keys.jsonl``."""
    return state_path.with_name(state_path.stem + LEDGER_SUFFIX)


def _entry(line: str) -> LedgerEntry | None:
    try:
        return LedgerEntry.model_validate_json(line)
    except ValidationError:
        return None


def _note(history: KeyHistory, entry: LedgerEntry) -> None:
    if entry.event == "made" and entry.terms is not None:
        history.terms.setdefault(entry.key_id, entry.terms)
    moment = entry.expires_at if entry.event == "made" else entry.at
    times = history.revoked if entry.event == "revoked" else history.ends
    if moment is not None and (entry.key_id not in times or moment < times[entry.key_id]):
        times[entry.key_id] = moment  # stamps sort as the times they name
