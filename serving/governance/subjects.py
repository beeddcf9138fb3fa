"""Keyed hashes of data subjects: how the audit trail names a user without keeping the user's identifier, and how
an erasure's tombstone names what it erased.

A keyed hash (HMAC-SHA256) rather than a plain one: a plain hash of a user id or a document id can be reversed by
hashing candidates. The key is the service's own, made once in the state store (``service_secrets``), so every
replica and a restored backup compute the same names; whoever holds the database can still test a candidate
identifier against them, which is what an operator answering "did you erase X?" needs. That is pseudonymisation
(GDPR art. 4(5)), not anonymisation: the docs say so.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
from typing import Literal

from serving.infra.clock import utc_now
from serving.infra.state_store import StateStore

SubjectKind = Literal["document", "user"]
SUBJECT_KEY_NAME = "subject-key"
REF_CHARS = 32  # 128 bits of the HMAC: names collide never in practice, and stay short in records


class SubjectKeys:
    """The service's subject key, read (or made) on first use; ``ref`` names a subject, ``keyed`` a value."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self._key: bytes | None = None
        self._lock = threading.Lock()

    def ref(self, kind: SubjectKind, tenant: str, identifier: str, collection: str | None = None) -> str:
        """The keyed name of a document (in its collection) or a user, within a tenant."""
        parts = (kind, tenant, collection or "", identifier)
        return self._mac("\x1f".join(parts))

    def keyed(self, value: object) -> str:
        """A personal value as erasure leaves it: its keyed hash (the same value gives the same hash)."""
        return self._mac(json.dumps(value, sort_keys=True, ensure_ascii=False))

    def _mac(self, message: str) -> str:
        return hmac.new(self._secret(), message.encode(), hashlib.sha256).hexdigest()[:REF_CHARS]

    def _secret(self) -> bytes:
        with self._lock:
            if self._key is None:
                self._key = bytes.fromhex(_load_or_make(self._store))
            return self._key


def _load_or_make(store: StateStore) -> str:
    made = secrets.token_hex(32)
    with store.transaction(write=True) as cur:
        # Replicas starting together may both make one: the first insert wins and both read it back.
        cur.execute(
            "INSERT INTO service_secrets (name, value, created_at) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
            (SUBJECT_KEY_NAME, made, utc_now()),
        )
        rows = cur.execute("SELECT value FROM service_secrets WHERE name = ?", (SUBJECT_KEY_NAME,))
    return str(rows[0]["value"])
