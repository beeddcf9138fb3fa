"""What ``ragops backup restore`` does to keys: a restore never brings a key back to life, nor changes what a key
may do.

The keys of the restored store are compared with two witnesses that outlive it: the key ledger beside the live
store (``serving.governance.key_ledger``) and the live store the restore replaces (when it can be read).

- **Revocations and expiries stick.** A key revoked by either witness is revoked in the restored store (at the
  earliest time a witness gives); a key's expiry is the earliest any of them gives (as made, or cut short by a
  rotation after the backup).
- **A key's terms never change** (tenant, role, secret hash, limits: no command or route changes them). A
  restored key whose terms differ from the ledger's, or, where the ledger does not know it, from the live
  store's, was edited: the restore is refused (``KeyTermsError``), and nothing changes. Where the ledger knows
  the key and agrees with the backup, a live store that differs is the edited one: the restore goes on and
  lists the key as changed.
- A key neither witness knows is restored and listed as added; one the live store has and the backup lacks
  (made after the backup) is gone after the restore, and listed as removed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from serving.governance.key_ledger import KeyHistory, KeyTerms
from serving.governance.keys import KeyStore, StoredKey

if TYPE_CHECKING:
    from serving.infra.state_store import StateStore

ChangeKind = Literal["added", "removed", "changed", "re_revoked", "cut_short"]


class KeyTermsError(ValueError):
    """Restored keys whose terms differ from what the ledger or the live store says: one line naming them."""


@dataclass(frozen=True, kw_only=True)
class KeyChange:
    """One key that differs after the restore from the store it replaces."""

    kind: ChangeKind
    key_id: str
    tenant: str
    role: str
    detail: str = ""

    def line(self) -> str:
        return f"{self.kind.replace('_', ' '):<13} {self.key_id} ({self.tenant}, {self.role}){self.detail}"


@dataclass(frozen=True, kw_only=True)
class KeyRestorePlan:
    revocations: dict[str, str]  # key id -> revoked_at to set in the restored store
    expiries: dict[str, str]  # key id -> expires_at to set
    changes: tuple[KeyChange, ...]


def stored_keys(store: StateStore) -> list[StoredKey]:
    """Every key of ``store`` with its secret's hash, to compare terms (never shown)."""
    keys = KeyStore(store)
    return [stored for record in keys.list() if (stored := keys.lookup(record.id)) is not None]


def terms_of(key: StoredKey) -> KeyTerms:
    record = key.record
    return KeyTerms(
        tenant=record.tenant,
        role=record.role,
        secret_hash=key.secret_hash,
        requests_per_minute=record.requests_per_minute,
        tokens_per_day=record.tokens_per_day,
    )


def plan_restore(
    restored: Sequence[StoredKey], current: Sequence[StoredKey] | None, history: KeyHistory
) -> KeyRestorePlan:
    """What the restore sets in the restored store, and what it changes compared with ``current`` (None: the live
    store could not be read, or there is none); ``KeyTermsError`` when a restored key was edited."""
    live = {key.record.id: key for key in current or ()}
    edited = [problem for key in restored if (problem := _edited(key, live.get(key.record.id), history))]
    if edited:
        more = f" and {len(edited) - 3} more" if len(edited) > 3 else ""
        raise KeyTermsError(f"the backup's keys were edited: {'; '.join(edited[:3])}{more}")
    revocations: dict[str, str] = {}
    expiries: dict[str, str] = {}
    changes: list[KeyChange] = []
    for key in restored:
        record, before = key.record, live.get(key.record.id)
        if before is None:
            changes.append(_change("added", key, ": not in the store it replaces"))
        elif terms_of(before) != terms_of(key):  # _edited let it through: the ledger agrees with the backup
            changed = ", ".join(terms_of(before).differences(terms_of(key)))
            changes.append(_change("changed", key, f": {changed} as in the key ledger (the live store had another)"))
        revoked = _earliest(history.revoked.get(record.id), before.record.revoked_at if before else None)
        if record.revoked_at is None and revoked is not None:
            revocations[record.id] = revoked
            changes.append(_change("re_revoked", key, f": revoked at {revoked} (active in the backup)"))
        ends = _earliest(history.ends.get(record.id), before.record.expires_at if before else None)
        if ends is not None and (record.expires_at is None or ends < record.expires_at):
            expiries[record.id] = ends
            was = record.expires_at or "never"
            changes.append(_change("cut_short", key, f": expires at {ends} (the backup says {was})"))
    kept = {key.record.id for key in restored}
    gone = [key for key in current or () if key.record.id not in kept]
    changes += [_change("removed", key, ": not in the backup (made after it)") for key in gone]
    return KeyRestorePlan(revocations=revocations, expiries=expiries, changes=tuple(changes))


def apply_plan(store: StateStore, plan: KeyRestorePlan) -> None:
    """Set the plan's revocations and expiries in ``store`` (the restored copy, before it goes live)."""
    with store.transaction(write=True) as cursor:
        cursor.executemany(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            [(at, key_id) for key_id, at in plan.revocations.items()],
        )
        cursor.executemany(
            "UPDATE api_keys SET expires_at = ? WHERE id = ?", [(at, key_id) for key_id, at in plan.expiries.items()]
        )


def _edited(key: StoredKey, before: StoredKey | None, history: KeyHistory) -> str | None:
    """Why ``key`` differs from its witness (the ledger, else the live store); None when it does not."""
    made = history.terms.get(key.record.id)
    if made is not None:
        witness, source = made, "the key ledger"
    elif before is not None:
        witness, source = terms_of(before), "the live store"
    else:
        return None
    if witness == terms_of(key):
        return None
    return f"{key.record.id} has another {', '.join(witness.differences(terms_of(key)))} than in {source}"


def _change(kind: ChangeKind, key: StoredKey, detail: str) -> KeyChange:
    return KeyChange(
        kind=kind, key_id=key.record.id, tenant=key.record.tenant, role=key.record.role.value, detail=detail
    )


def _earliest(*moments: str | None) -> str | None:
    given = [moment for moment in moments if moment is not None]
    return min(given) if given else None  # stamps sort as the times they name
