"""API keys: issued, stored, listed, revoked, rotated (``KeyStore``) and checked on each request
(``Authenticator``, admission's ``KeyLookup``).

A key is ``rgk_<id>_<secret>``: the id (12 letters and digits) is public, listed and audited; the secret
(``secrets.token_urlsafe(32)``) is shown once, when the key is made, and only its SHA-256 is stored. A request's
key is found by its id and its secret checked with ``hmac.compare_digest`` on the hashes. Keys from the settings
(``api_keys``, ``RAGOPS_API_KEYS``: key -> ``TENANT`` or ``TENANT:ROLE``, admin when no role is given) are
checked in constant time against every one; their id is ``env-<first 8 hex of sha256(key)>`` and they are
removed from the settings, not revoked.

A replica trusts what it looked up for ``cache_s`` seconds: a revocation takes effect within that, and a request
costs no query while its key is cached. Expiry is checked on every request. ``last_used_at`` is written at most
once a minute per key and replica, never on every request. On SQLite every key made, revoked or cut short by a
rotation is also appended to the key ledger beside the store (``key_ledger``), which a backup restore re-applies.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import string
import threading
import time
import unicodedata
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from retrieval.index import SCOPE_NAME_RULE, is_scope_name
from serving.governance.access import AdmissionUnavailableError, KeyLimits, Principal, Role, parse_tenant_role
from serving.governance.key_ledger import KeyLedger, KeyTerms
from serving.infra.clock import parse_duration, parse_moment, parse_stamp, stamp, utc_now
from serving.infra.state_store import StateStoreError
from serving.infra.ttl_cache import TtlCache

if TYPE_CHECKING:
    from serving.infra.state_store import Cursor, Row, StateStore

log = logging.getLogger("ragops.keys")

KEY_PREFIX = "rgk_"
KEY_ID_LENGTH = 12
_KEY_ID_ALPHABET = string.ascii_letters + string.digits  # no '-': an id never reads as a command-line option
_KEY = re.compile(rf"^{KEY_PREFIX}([A-Za-z0-9]{{{KEY_ID_LENGTH}}})_([A-Za-z0-9_-]{{20,100}})$")
# What a log line must never show: a key, or anything after its id (a truncated secret is still a secret).
ENV_KEY_PREFIX = "env-"
ENV_KEY_NAME = "RAGOPS_API_KEYS"

NAME_MAX_CHARS = 100
# Control (C0, C1), format, surrogate, private-use and unassigned characters, line and paragraph separators.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
LIMIT_MAX = 1_000_000_000
MAX_GRACE = timedelta(days=30)  # a rotated key's grace: long enough to roll a deployment, not a second key
TOUCH_EVERY_S = 60.0  # last_used_at resolution: one write a minute per key and replica at most
_CACHE_ENTRIES = 10_000  # ids a replica remembers (unknown ones too, so guessing ids costs no query each)

KeySource = Literal["store", "env"]
KeyStatus = Literal["active", "expired", "revoked"]


class ApiKeyRecord(BaseModel):
    """What is known about a key, never its secret or the secret's hash. Times are ISO 8601 UTC text."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(description="Public id: the part of the key after 'rgk_' and before the secret.")
    name: str
    tenant: str
    role: Role
    created_at: str | None = Field(description="None for keys from RAGOPS_API_KEYS.")
    expires_at: str | None = None
    revoked_at: str | None = None
    last_used_at: str | None = Field(None, description="Written at most once a minute per key and replica.")
    requests_per_minute: int | None = Field(None, description="None: the role's limit (settings role_limits).")
    tokens_per_day: int | None = Field(None, description="None: the role's limit (settings role_limits).")
    rotated_from: str | None = Field(None, description="The id of the key this one replaced.")
    source: KeySource = Field(description="store: made with ragops keys / the admin API; env: RAGOPS_API_KEYS.")

    def status(self, now: str) -> KeyStatus:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:  # stamps sort as the times they name
            return "expired"
        return "active"

    def principal(self) -> Principal:
        return Principal(self.id, self.tenant, self.role, KeyLimits(self.requests_per_minute, self.tokens_per_day))


class IssuedKey(NamedTuple):
    """A new key: its record, and the key itself, which is shown this once and never again."""

    record: ApiKeyRecord
    key: str

    def body(self) -> dict[str, Any]:
        """The record with the key, as ``--json`` and the admin API show it (once)."""
        return {**self.record.model_dump(mode="json"), "key": self.key}


@dataclass(frozen=True)
class StoredKey:
    """A stored key as the authenticator checks it (never returned to a user)."""

    record: ApiKeyRecord
    secret_hash: str


class KeyNotFoundError(LookupError):
    """No key in the store has this id."""


class KeyStateError(ValueError):
    """The key exists but cannot do what was asked (rotate a revoked or expired key)."""


class EnvKeyError(KeyStateError):
    """A ``RAGOPS_API_KEYS`` key: it changes where it is set (its Secret), never through ragops."""


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_key(token: str) -> tuple[str, str] | None:
    """(id, secret) of a token in the ``rgk_<id>_<secret>`` format; None for anything else."""
    match = _KEY.match(token)
    return (match.group(1), match.group(2)) if match else None


def new_key_id() -> str:
    return "".join(secrets.choice(_KEY_ID_ALPHABET) for _ in range(KEY_ID_LENGTH))


def expiry_from(text: str, now: datetime) -> datetime:
    """When a key made at ``now`` expires: ``30d``/``24h``/``90s`` from now, or a date or ISO time
    (``2027-01-01`` is its midnight UTC). ``ValueError`` when unreadable or not in the future."""
    text = text.strip()
    try:
        duration = parse_duration(text, required=False)
        moment = now + duration if duration is not None else parse_moment(text)
    except OverflowError:
        raise ValueError(f"expiry too far in the future: {text!r}") from None
    if moment <= now:
        raise ValueError(f"expiry {text!r} is not in the future")
    return moment


def grace_from(text: str) -> timedelta:
    """A rotation's grace: ``0`` (the old key stops at once), or ``90s``/``15m``/``24h``/``30d``, at most 30 days."""
    if text.strip() == "0":
        return timedelta(0)
    grace = parse_duration(text.strip(), required=False)
    if grace is None or grace > MAX_GRACE:
        raise ValueError(f"grace must be 0 or a duration up to {MAX_GRACE.days}d (like 24h): {text!r}")
    return grace


def is_unprintable(char: str) -> bool:
    """A character a key's name never holds (names are printed in tables), and one a stored name shows escaped."""
    return unicodedata.category(char) in _UNPRINTABLE


def check_key_name(name: str) -> str:
    """``name`` when it is a key's name: ``ValueError`` when too long or holding an unprintable character."""
    if len(name) > NAME_MAX_CHARS:
        raise ValueError(f"name must be at most {NAME_MAX_CHARS} characters")
    if bad := next((char for char in name if is_unprintable(char)), None):
        raise ValueError(f"name must not hold control or other unprintable characters (U+{ord(bad):04X})")
    return name


def check_key_fields(tenant: str, name: str, limits: KeyLimits) -> None:
    """The rules a new key's fields follow (the HTTP body states the same in its schema): ``ValueError``."""
    if not is_scope_name(tenant):
        raise ValueError(f"tenant must be {SCOPE_NAME_RULE}: {tenant!r}")
    check_key_name(name)
    for what, value in (("requests_per_minute", limits.requests_per_minute), ("tokens_per_day", limits.tokens_per_day)):
        if value is not None and not 1 <= value <= LIMIT_MAX:
            raise ValueError(f"{what} must be between 1 and {LIMIT_MAX}")


_COLUMNS = (
    "id, name, tenant, role, created_at, expires_at, revoked_at, last_used_at, requests_per_minute, "
    "tokens_per_day, rotated_from"
)


def _record(row: Row) -> ApiKeyRecord:
    return ApiKeyRecord(**{column: row[column] for column in _COLUMNS.split(", ")}, source="store")


class KeyStore:
    """The keys in the state store (table ``api_keys``)."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self._ledger = KeyLedger.beside(store)  # what a restore re-applies (SQLite)

    def create(
        self,
        tenant: str,
        role: Role,
        name: str,
        expires_at: datetime | None,
        limits: KeyLimits,
        rotated_from: str | None = None,
    ) -> IssuedKey:
        """A new key; ``ValueError`` when a field breaks ``check_key_fields``."""
        check_key_fields(tenant, name, limits)
        with self._store.transaction(write=True) as cursor:
            return self._insert(
                cursor=cursor,
                tenant=tenant,
                role=role,
                name=name,
                expires_at=expires_at,
                limits=limits,
                rotated_from=rotated_from,
            )

    def _insert(
        self,
        cursor: Cursor,
        tenant: str,
        role: Role,
        name: str,
        expires_at: datetime | None,
        limits: KeyLimits,
        rotated_from: str | None,
    ) -> IssuedKey:
        key_id, secret = new_key_id(), secrets.token_urlsafe(32)
        record = ApiKeyRecord(
            id=key_id, name=name, tenant=tenant, role=Role(role), created_at=utc_now(),
            expires_at=stamp(expires_at) if expires_at is not None else None,
            requests_per_minute=limits.requests_per_minute, tokens_per_day=limits.tokens_per_day,
            rotated_from=rotated_from, source="store",
        )  # fmt: skip
        values, hashed = [getattr(record, column) for column in _COLUMNS.split(", ")], secret_hash(secret)
        cursor.execute(
            f"INSERT INTO api_keys ({_COLUMNS}, secret_hash) VALUES ({', '.join('?' * 12)})", [*values, hashed]
        )
        terms = KeyTerms(tenant=tenant, role=role, secret_hash=hashed, **asdict(limits))
        self._ledger.made(key_id, str(record.created_at), record.expires_at, terms)
        return IssuedKey(record, f"{KEY_PREFIX}{key_id}_{secret}")

    def list(self) -> list[ApiKeyRecord]:
        with self._store.transaction() as cursor:
            rows = cursor.execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, id")
        return [_record(row) for row in rows]

    def stored_roles(self) -> dict[str, str]:
        """Each key's id and its role as stored, unchecked: a role this version does not know shows here, where
        ``list`` would refuse the row (the compliance report names such keys)."""
        with self._store.transaction() as cursor:
            rows = cursor.execute("SELECT id, role FROM api_keys ORDER BY created_at, id")
        return {str(row["id"]): str(row["role"]) for row in rows}

    def get(self, key_id: str) -> ApiKeyRecord | None:
        stored = self.lookup(key_id)
        return stored.record if stored is not None else None

    def lookup(self, key_id: str) -> StoredKey | None:
        """The record and the secret's hash, for the authenticator."""
        with self._store.transaction() as cursor:
            rows = cursor.execute(f"SELECT {_COLUMNS}, secret_hash FROM api_keys WHERE id = ?", [key_id])
        return StoredKey(_record(rows[0]), rows[0]["secret_hash"]) if rows else None

    def revoke(self, key_id: str) -> ApiKeyRecord:
        """Revoke a key now (a key revoked before keeps its time), in the ledger before the commit;
        ``KeyNotFoundError`` for an unknown id."""
        with self._store.transaction(write=True) as cursor:
            cursor.lock(f"api_key:{key_id}")
            rows = cursor.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", [key_id])
            if not rows:
                raise KeyNotFoundError(f"no key with id {key_id!r}")
            if (record := _record(rows[0])).revoked_at is None:
                record = record.model_copy(update={"revoked_at": utc_now()})
                cursor.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", [record.revoked_at, key_id])
                self._ledger.revoked(key_id, str(record.revoked_at))
        return record

    def rotate(self, key_id: str, grace: timedelta) -> IssuedKey:
        """A new key with the old one's tenant, role, name and limits (and, when the old one expires, the same
        lifetime from now); the old key then expires after ``grace``, never later than it already would."""
        now = parse_stamp(utc_now())
        with self._store.transaction(write=True) as cursor:
            cursor.lock(f"api_key:{key_id}")  # two rotations at once (Postgres replicas) make one successor
            rows = cursor.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", [key_id])
            if not rows:
                raise KeyNotFoundError(f"no key with id {key_id!r}")
            old = _record(rows[0])
            if old.status(stamp(now)) != "active":
                raise KeyStateError(f"key {key_id} is {old.status(stamp(now))}: make a new one instead")
            issued = self._insert(
                cursor=cursor,
                tenant=old.tenant,
                role=old.role,
                name=old.name,
                expires_at=_renewed_expiry(old, now),
                limits=old.principal().limits,
                rotated_from=old.id,
            )
            ends = stamp(now + grace)
            if old.expires_at is None or ends < old.expires_at:
                cursor.execute("UPDATE api_keys SET expires_at = ? WHERE id = ?", [ends, key_id])
                self._ledger.cut_short(key_id, ends)
        return issued

    def touch(self, key_id: str, when: str) -> None:
        """Note that the key was used at ``when``."""
        with self._store.transaction(write=True) as cursor:
            cursor.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", [when, key_id])

    def any_made(self) -> bool:
        """Whether a key was ever made here. Revoked and expired ones count: a server that had keys never opens
        up again when its last key lapses (that would make every caller its admin); it stays closed, and a new
        key is made with the CLI."""
        with self._store.transaction() as cursor:
            return bool(cursor.execute("SELECT 1 FROM api_keys LIMIT 1"))


def _renewed_expiry(old: ApiKeyRecord, now: datetime) -> datetime | None:
    if old.expires_at is None or old.created_at is None:
        return None
    return now + (parse_stamp(old.expires_at) - parse_stamp(old.created_at))


@dataclass(frozen=True)
class _EnvKey:
    record: ApiKeyRecord
    digest: bytes  # sha256 of the key: compared at one length whatever the token's


class EnvKeys:
    """The keys of the ``api_keys`` setting (``RAGOPS_API_KEYS``)."""

    def __init__(self, keys: dict[str, str]) -> None:
        self._keys = [_env_key(key, tenant_role) for key, tenant_role in keys.items()]

    def __bool__(self) -> bool:
        return bool(self._keys)

    def records(self) -> list[ApiKeyRecord]:
        return [entry.record for entry in self._keys]

    def get(self, key_id: str) -> ApiKeyRecord | None:
        return next((entry.record for entry in self._keys if entry.record.id == key_id), None)

    def refuse_change(self, key_id: str) -> None:
        """``EnvKeyError`` when ``key_id`` is one of these: revoking or rotating it is done in the settings."""
        if self.get(key_id) is not None:
            raise EnvKeyError(
                f"key {key_id} comes from RAGOPS_API_KEYS and cannot be changed here: remove it from "
                "RAGOPS_API_KEYS (e.g. its Kubernetes Secret) and restart"
            )

    def principal(self, token: str) -> Principal | None:
        """The principal of the env key ``token`` is; every key is compared, whichever matches."""
        digest = hashlib.sha256(token.encode()).digest()
        found: _EnvKey | None = None
        for entry in self._keys:
            if hmac.compare_digest(digest, entry.digest):
                found = entry
        return found.record.principal() if found is not None else None


def _env_key(key: str, tenant_role: str) -> _EnvKey:
    tenant, role = parse_tenant_role(tenant_role)
    digest = hashlib.sha256(key.encode())
    record = ApiKeyRecord(
        id=f"{ENV_KEY_PREFIX}{digest.hexdigest()[:8]}", name=ENV_KEY_NAME, tenant=tenant, role=role,
        created_at=None, source="env",
    )  # fmt: skip
    return _EnvKey(record, digest.digest())


def _store_unavailable(error: Exception) -> AdmissionUnavailableError:
    """A state store that failed while checking a key: admission's 503 (never an open door), and a log line."""
    log.error("key store unavailable: %s", error)
    return AdmissionUnavailableError("the key store is unavailable; try again shortly", "key_store_unavailable")


class Authenticator:
    """admission's ``KeyLookup`` over both sources: the settings' keys and the state store's."""

    def __init__(self, keys: KeyStore, env_keys: dict[str, str], cache_s: float) -> None:
        self._keys = keys
        self._env = EnvKeys(env_keys)
        self._stored: TtlCache[StoredKey | None] = TtlCache(cache_s, max_entries=_CACHE_ENTRIES)
        self._store_has_keys: TtlCache[bool] = TtlCache(cache_s, max_entries=1)
        self._touched: dict[str, float] = {}
        self._touch_lock = threading.Lock()

    def has_keys(self) -> bool:
        if self._env:
            return True
        try:
            return self._store_has_keys.get("", self._keys.any_made)
        except StateStoreError as exc:  # no key in the settings and no answer from the store: refuse, never open
            raise _store_unavailable(exc) from exc

    def authenticate(self, token: str) -> Principal | None:
        """A store key when the token has the format, else (or when the store has no such key) a settings key.
        With the store down, settings keys still work and any other token is a 503, not a 401."""
        parsed = parse_key(token)
        try:
            principal = self._store_principal(*parsed) if parsed is not None else None
        except StateStoreError as exc:
            principal = self._env.principal(token)
            if principal is None:
                raise _store_unavailable(exc) from exc
        return principal or self._env.principal(token)

    def _store_principal(self, key_id: str, secret: str) -> Principal | None:
        stored = self._stored.get(key_id, lambda: self._keys.lookup(key_id))
        if stored is None or not hmac.compare_digest(stored.secret_hash, secret_hash(secret)):
            return None
        now = utc_now()
        if stored.record.status(now) != "active":
            return None
        self._note_use(key_id, now)
        return stored.record.principal()

    def _note_use(self, key_id: str, now: str) -> None:
        """Write ``last_used_at`` when this replica has not for a minute. A failed write costs the request
        nothing: the time is informational."""
        moment = time.monotonic()
        with self._touch_lock:
            if moment - self._touched.get(key_id, -TOUCH_EVERY_S) < TOUCH_EVERY_S:
                return
            self._touched[key_id] = moment
        try:
            self._keys.touch(key_id, now)
        except StateStoreError as exc:  # the store is busy or down: the request goes on; the next minute retries
            log.warning("could not note key %s as used: %s", key_id, exc)
