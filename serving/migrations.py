"""The state store's schema, as numbered migrations applied in order (``StateStore.migrate``). A migration is
never edited once released: a change is a new one. SQL is portable between SQLite and Postgres (TEXT, BIGINT,
DOUBLE PRECISION; times are ISO 8601 UTC text, ``serving.clock``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: tuple[str, ...]


_GOVERNANCE = (
    # API keys: only a hash of the secret is stored. Limits NULL: the role's, from the settings.
    """CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        tenant TEXT NOT NULL,
        role TEXT NOT NULL,
        secret_hash TEXT NOT NULL,
        created_at TEXT NOT NULL,
        expires_at TEXT,
        revoked_at TEXT,
        last_used_at TEXT,
        requests_per_minute BIGINT,
        tokens_per_day BIGINT,
        rotated_from TEXT
    )""",
    "CREATE INDEX api_keys_tenant ON api_keys (tenant)",
    # The audit trail: ``body`` is the record's canonical JSON; ``hash`` = sha256(prev_hash + body). The other
    # columns repeat fields of the body for queries; verification reads the body.
    """CREATE TABLE audit_records (
        seq BIGINT PRIMARY KEY,
        ts TEXT NOT NULL,
        tenant TEXT,
        key_id TEXT,
        body TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )""",
    "CREATE INDEX audit_records_ts ON audit_records (ts)",
    "CREATE INDEX audit_records_tenant_ts ON audit_records (tenant, ts)",
    # The chain's head (one row, id 1): the last record's seq and hash. Writers lock it, so replicas append to
    # one chain.
    "CREATE TABLE audit_head (id BIGINT PRIMARY KEY, seq BIGINT NOT NULL, hash TEXT NOT NULL)",
    # What pruning removed: the remaining chain verifies from the last checkpoint's hash.
    """CREATE TABLE audit_checkpoints (
        seq BIGINT PRIMARY KEY,
        hash TEXT NOT NULL,
        pruned_before TEXT NOT NULL,
        records BIGINT NOT NULL,
        created_at TEXT NOT NULL
    )""",
    # Usage totals per UTC day, tenant and key, added to in the audit writer's transaction.
    """CREATE TABLE usage_daily (
        day TEXT NOT NULL,
        tenant TEXT NOT NULL,
        key_id TEXT NOT NULL,
        requests BIGINT NOT NULL,
        cached BIGINT NOT NULL,
        prompt_tokens BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL,
        cost_usd DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (day, tenant, key_id)
    )""",
    # Monthly budgets per tenant, set by admins.
    """CREATE TABLE budgets (
        tenant TEXT PRIMARY KEY,
        monthly_usd DOUBLE PRECISION NOT NULL,
        soft_ratio DOUBLE PRECISION NOT NULL,
        updated_at TEXT NOT NULL,
        updated_by TEXT
    )""",
)

MIGRATIONS: tuple[Migration, ...] = (Migration(1, "governance", _GOVERNANCE),)
