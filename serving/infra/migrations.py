"""The state store's schema, as numbered migrations applied in order (``StateStore.migrate``). A migration is
never edited once released: a change is a new one. SQL is portable between SQLite and Postgres (TEXT, BIGINT,
DOUBLE PRECISION; times are ISO 8601 UTC text, ``serving.infra.clock``)."""

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

_PRODUCTION_LOOP = (
    # Answers kept (redacted) for feedback_retention_days, so feedback, drift and canary analysis can refer to
    # them; apart from the audit trail, which keeps hashes only. ``citations`` is a JSON list of the passages
    # shown (index, doc id, chunk id, title, text, cited); ``user_hash`` a hash of the user id, never the id.
    """CREATE TABLE answers (
        id TEXT PRIMARY KEY,
        ts TEXT NOT NULL,
        tenant TEXT NOT NULL,
        collection TEXT NOT NULL,
        user_hash TEXT,
        question TEXT NOT NULL,
        answer TEXT NOT NULL,
        citations TEXT NOT NULL,
        outcome TEXT NOT NULL,
        prompt_name TEXT NOT NULL,
        prompt_version TEXT NOT NULL,
        prompt_hash TEXT NOT NULL,
        generator TEXT,
        model TEXT,
        fallback TEXT,
        groundedness DOUBLE PRECISION,
        relevance DOUBLE PRECISION,
        latency_ms DOUBLE PRECISION,
        completion_tokens BIGINT NOT NULL
    )""",
    "CREATE INDEX answers_ts ON answers (ts)",
    "CREATE INDEX answers_prompt_ts ON answers (prompt_name, prompt_version, ts)",
    # One rating per answer (a user who changes their mind replaces it), in the answer's tenant.
    """CREATE TABLE feedback (
        answer_id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        ts TEXT NOT NULL,
        rating TEXT NOT NULL,
        comment TEXT,
        correction TEXT,
        key_id TEXT
    )""",
    "CREATE INDEX feedback_ts ON feedback (ts)",
    # Live label assignments: what the servers answer with now. ``declared`` is the version prompts/registry.yaml
    # (git) gave the label when the store last took it: when git declares another, the store follows it; a
    # label moved at run time (a rollback) keeps its version until then.
    """CREATE TABLE prompt_labels (
        prompt TEXT NOT NULL,
        label TEXT NOT NULL,
        version TEXT NOT NULL,
        declared TEXT,
        updated_at TEXT NOT NULL,
        updated_by TEXT,
        PRIMARY KEY (prompt, label)
    )""",
    # Every label move, in order: what ``rollback`` returns to, and part of a version's lineage.
    """CREATE TABLE prompt_label_moves (
        seq BIGINT PRIMARY KEY,
        ts TEXT NOT NULL,
        prompt TEXT NOT NULL,
        label TEXT NOT NULL,
        version TEXT NOT NULL,
        previous TEXT,
        actor TEXT,
        reason TEXT
    )""",
    "CREATE INDEX prompt_label_moves_label ON prompt_label_moves (prompt, label, seq)",
    # The canary of a prompt: which version, what share of users it serves now (0 after a rollback), since
    # when, and how its analysis last ended (running, rolled_back, promoted, or stopped by an operator) with the
    # evidence as JSON.
    """CREATE TABLE canaries (
        prompt TEXT PRIMARY KEY,
        version TEXT NOT NULL,
        stable_version TEXT NOT NULL,
        share DOUBLE PRECISION NOT NULL,
        status TEXT NOT NULL,
        started_at TEXT NOT NULL,
        decided_at TEXT,
        decision TEXT
    )""",
    # Drift reference profiles (JSON: per-signal samples, query embeddings, lineage); the newest one per name is
    # the one checks compare against.
    """CREATE TABLE drift_profiles (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        created_at TEXT NOT NULL,
        source TEXT NOT NULL,
        body TEXT NOT NULL
    )""",
    "CREATE INDEX drift_profiles_name ON drift_profiles (name, created_at)",
    # Lineage: eval runs, gates, releases, label moves, canary decisions, baselines and drift profiles, each with
    # the hashes of what it used (JSON), in order.
    """CREATE TABLE lineage_events (
        seq BIGINT PRIMARY KEY,
        ts TEXT NOT NULL,
        kind TEXT NOT NULL,
        prompt TEXT,
        version TEXT,
        body TEXT NOT NULL
    )""",
    "CREATE INDEX lineage_events_prompt ON lineage_events (prompt, version, seq)",
)

_BUDGET_RESERVATIONS = (
    # What admitted requests may still spend: admission adds a row per chat request of a tenant with a budget
    # (``request_id``: the reservation's own id, on the request's audit record), the audit writer removes it in
    # the transaction that adds the request's cost to ``usage_daily``; a row whose replica died before expires.
    """CREATE TABLE budget_reservations (
        request_id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        usd DOUBLE PRECISION NOT NULL,
        expires_at TEXT NOT NULL
    )""",
    "CREATE INDEX budget_reservations_tenant ON budget_reservations (tenant, expires_at)",
)

_RATINGS_PER_RATER = (
    # One rating per answer and rater key (a rater who changes their mind replaces their own; another reader's
    # rating is another row). Before: one per answer, the last rater's. ``key_id`` was NULL for ratings given
    # before keys were recorded: those become the anonymous key's.
    """CREATE TABLE feedback_by_rater (
        answer_id TEXT NOT NULL,
        key_id TEXT NOT NULL,
        tenant TEXT NOT NULL,
        ts TEXT NOT NULL,
        rating TEXT NOT NULL,
        comment TEXT,
        correction TEXT,
        PRIMARY KEY (answer_id, key_id)
    )""",
    "INSERT INTO feedback_by_rater (answer_id, key_id, tenant, ts, rating, comment, correction) "
    "SELECT answer_id, COALESCE(key_id, 'anonymous'), tenant, ts, rating, comment, correction FROM feedback",
    "DROP TABLE feedback",
    "ALTER TABLE feedback_by_rater RENAME TO feedback",
    "CREATE INDEX feedback_ts ON feedback (ts)",
)

_DATA_RIGHTS = (
    # An audit record's personal fields (who asked, what: ``audit_personal.PERSONAL_FIELDS`` in serving.governance)
    # live here, apart from the hashed body, which holds their salted digest: erasure replaces them with keyed
    # hashes and the chain still verifies. NULL: a record written before this migration (its fields in its body).
    "ALTER TABLE audit_records ADD COLUMN personal TEXT",
    # Secrets the service makes for itself, shared by replicas through the store: the key of the keyed hashes
    # that name erased subjects and pseudonymise users in the audit trail.
    "CREATE TABLE service_secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL, created_at TEXT NOT NULL)",
    # Erasure requests: the journal that lets a re-run finish an interrupted erasure. ``identifier`` (the
    # document id or user) is kept only until the erasure finished; ``subject_ref`` is its keyed hash.
    # ``suite_refs``: keyed hashes of a user's answer ids, so that suite lines listed by one run (which deletes the
    # answers they were found by) are still found by a later run that rewrites the suites.
    """CREATE TABLE erasures (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        tenant TEXT NOT NULL,
        collection TEXT,
        subject_ref TEXT NOT NULL,
        identifier TEXT,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        removed TEXT,
        suite_refs TEXT
    )""",
    "CREATE INDEX erasures_subject ON erasures (subject_ref)",
    # Erasing a user finds their kept answers by the canary subject.
    "CREATE INDEX answers_user ON answers (tenant, user_hash)",
)

_CONVERSATIONS = (
    # Conversations kept server-side (``serving.answering.conversations``), one row each, owned by a tenant and
    # key; ``turns`` is a JSON list of the turns (the question as the input guard redacted it, the guarded answer,
    # the answer's id, the retrieval query, when), ``chars`` their questions' and answers' length, ``user_hash``
    # the request's canary subject (erasure finds a user's by it). Gone after ``expires_at`` (the last turn plus
    # conversation_retention_days): invisible at once, deleted by the retention run.
    """CREATE TABLE conversations (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        key_id TEXT NOT NULL,
        user_hash TEXT,
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        turns TEXT NOT NULL,
        chars BIGINT NOT NULL
    )""",
    "CREATE INDEX conversations_user ON conversations (tenant, user_hash)",
    "CREATE INDEX conversations_expires ON conversations (expires_at)",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "governance", _GOVERNANCE),
    Migration(2, "production_loop", _PRODUCTION_LOOP),
    Migration(3, "budget_reservations", _BUDGET_RESERVATIONS),
    Migration(4, "ratings_per_rater", _RATINGS_PER_RATER),
    Migration(5, "data_rights", _DATA_RIGHTS),
    Migration(6, "conversations", _CONVERSATIONS),
)
