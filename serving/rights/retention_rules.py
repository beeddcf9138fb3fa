"""The retention table: every store that holds data, what it holds, its period (the setting that sets it and its
default) and the legal reason for it. ``ragops retention show``, the server's retention run, the docs page
(``docs/guides/retention.md``, rendered by ``docs/hooks.py``) and the tests read this one tuple.

Defaults: no period in this table keeps anything personal longer than 30 days, except the audit trail's (365 days:
see its note). Kept longer, with no period of their own: drift profiles built from traffic (question embeddings),
eval run outputs under ``data_dir/evals/<run>/`` (``results.json``, ``report.html``: the questions, answers and
passages of the suites run; delete the run folder), and unfinished ``erasures`` rows (the identifier is kept
until the erasure finishes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Enforcement = Literal["pruned", "expires", "kept", "not applied"]
"""pruned: a retention run removes what is past the period; expires: the store drops entries by itself; kept: no
period of its own (nothing personal, or kept with what it belongs to); not applied: outside ragops' reach or not
automatic (the operator's or a destination's)."""

ENFORCEMENT_MEANING: dict[Enforcement, str] = {
    "pruned": "`ragops retention apply` and the server's daily run remove what is past the period",
    "expires": "the store drops entries by itself",
    "kept": "no period of its own: nothing personal, or kept with what it belongs to",
    "not applied": "outside ragops' reach, or not automatic: the note says whose retention applies",
}


@dataclass(frozen=True, kw_only=True)
class RetentionRule:
    """One store's rule. ``setting``: the flat setting name of its period; ``unit``: the unit that setting is in
    (days, or seconds for a TTL); ``default_days``: the setting's default, always in days whatever ``unit`` says
    (a seconds setting's default is ``default_days * 86_400``); ``zero_keeps_forever``: a setting of 0 means no
    pruning (else 0 means nothing is kept)."""

    store: str
    holds: str
    enforced: Enforcement
    setting: str | None = None
    default_days: float | None = None
    unit: Literal["days", "seconds"] = "days"
    zero_keeps_forever: bool = False
    legal_note: str


RETENTION_RULES: tuple[RetentionRule, ...] = (
    RetentionRule(
        store="answers",
        holds="Kept answers (question, answer and the passages shown, redacted; the user as a hash) and their ratings "
        "(comments and corrections redacted): state store tables `answers` and `feedback`.",
        enforced="pruned",
        setting="feedback_retention_days",
        default_days=30,
        legal_note="Storage limitation (GDPR art. 5(1)(e)): kept only as long as feedback, drift and canary analysis "
        "need them; redacted text can still describe a person. 0: answers are not kept.",
    ),
    RetentionRule(
        store="conversations",
        holds="Server-side conversations: each turn's question as the input guard redacted it, the guarded answer, "
        "its answer id and retrieval query, keyed by tenant, API key and the user's hash: state store table "
        "`conversations`, or Redis keys `ragops:conversation:*`.",
        enforced="pruned",
        setting="conversation_retention_days",
        default_days=7,
        legal_note="Storage limitation (GDPR art. 5(1)(e)): kept only while the conversation may go on, counted from "
        "its last turn. In the state store a retention run deletes the expired ones; in Redis each key expires by "
        "its TTL (refreshed on each turn). 0: conversations are not kept.",
    ),
    RetentionRule(
        store="query_vectors",
        holds="The embedding of each question asked, keyed by the question's SHA-256, in the embedding cache "
        "(`cache/embeddings.sqlite`).",
        enforced="pruned",
        setting="query_vector_retention_days",
        default_days=30,
        legal_note="Derived from what a person asked (a repeated question is recognisable by its hash): treated like "
        "the question itself. 0: each run removes them all.",
    ),
    RetentionRule(
        store="audit",
        holds="One hash-chained record per request and admin action (key, tenant, route, outcome, guards, tokens, "
        "cost; questions and answers as SHA-256, or redacted with `audit_content=redacted`; the client address of "
        "refused unauthenticated requests): `audit_records`, pruned behind `audit_checkpoints`.",
        enforced="pruned",
        setting="audit_retention_days",
        default_days=365,
        zero_keeps_forever=True,
        legal_note="Longer on purpose: the EU AI Act (art. 12 and 19) has a high-risk system's logs kept at least six "
        "months, and the trail is the evidence of what the service did, for whom. Pruned by sequence behind a "
        "checkpoint the rest still verifies from; the prune writes its own record. 0: kept forever.",
    ),
    RetentionRule(
        store="usage_ledger",
        holds="Requests, tokens and cost per day, tenant and key: `usage_daily` (budgets and `ragops usage` read it).",
        enforced="kept",
        legal_note="Counts per key id, no content. Not pruned: an audit prune carries the pruned records' usage in its "
        "own record, so the ledger still adds up to the chain.",
    ),
    RetentionRule(
        store="answer_cache",
        holds="Answers cached by question, collection, tenant, index version, prompt and generator: in process (an "
        "LRU of `answer_cache_size` entries) or in Redis (`answer_cache_backend=redis`).",
        enforced="expires",
        setting="answer_cache_ttl_s",
        default_days=1,
        unit="seconds",
        legal_note="Redis expires each entry after its TTL by itself; the in-process cache lives only as long as the "
        "process and drops the least recently used. Nothing for a retention run to do.",
    ),
    RetentionRule(
        store="rate_limits",
        holds="Request and token counters per key, failed authentications per client address: in process or Redis.",
        enforced="expires",
        legal_note="Each counter expires with its window (a minute, or a key's day of tokens).",
    ),
    RetentionRule(
        store="passage_vectors",
        holds="Documents' chunks and their embeddings: the index, and the embedding cache's passage vectors.",
        enforced="kept",
        legal_note="No personal data beyond the documents themselves: kept while the document is. Taking a person "
        "out of a document is an erasure, not a retention period.",
    ),
    RetentionRule(
        store="api_keys",
        holds="API keys: name, tenant, role, the secret's hash, when made, last used, revoked (`api_keys`; on "
        "SQLite also the key ledger file beside it).",
        enforced="kept",
        legal_note="Kept while the key is, and after its revocation as what audit records' key ids refer to. A key's "
        "name is the operator's label: keep people's names out of it.",
    ),
    RetentionRule(
        store="drift_profiles",
        holds="Drift reference profiles: per-signal samples and question embeddings of the eval run or traffic a "
        "baseline was built from (`drift_profiles`).",
        enforced="kept",
        legal_note="No text. The newest profile of a name is what drift checks compare with, so it outlives the "
        "answers it was built from: build baselines `--from-suite` to keep users' questions out of it.",
    ),
    RetentionRule(
        store="erasure_journal",
        holds="Erasure requests: the kind of subject, its keyed hash, what each store removed; the identifier only "
        "until the erasure finished (`erasures`).",
        enforced="kept",
        legal_note="Kept: the evidence that each erasure was done (GDPR art. 5(2), accountability). A finished row "
        "holds no identifier, only its keyed hash; an unfinished one keeps it so that a re-run can finish the "
        "erasure.",
    ),
    RetentionRule(
        store="eval_suites",
        holds="Eval suites exported from rated answers (`ragops feedback export`): questions, answers and "
        "corrections, redacted, as files under `evals/` that a prompt engineer commits; and the eval answer cache "
        "(`cache/eval-answers.sqlite`) of the suites run.",
        enforced="not applied",
        legal_note="Files in git, not removed automatically: review an export before committing it. `ragops erase "
        "--suites` rewrites the suites that hold an erased subject.",
    ),
    RetentionRule(
        store="backups",
        holds="`ragops backup` archives: the index and the state store as they were.",
        enforced="not applied",
        legal_note="The operator's files: rotate them within the longest period above (the audit's); an older archive "
        "holds data past its period.",
    ),
    RetentionRule(
        store="traces",
        holds="Traces sent to LangSmith or an OTLP collector when tracing is on: question, passages, answer "
        "(redacted by default) and timings.",
        enforced="not applied",
        legal_note="They leave the machine: the destination's retention applies; set it there (30 days keeps it in "
        "line with the answers).",
    ),
    RetentionRule(
        store="audit_anchor",
        holds="The audit chain's head (seq and hash), appended to `audit_anchor_file`.",
        enforced="kept",
        legal_note="Hashes only, nothing personal: kept as long as the chain is to be checked against it.",
    ),
    RetentionRule(
        store="server_logs",
        holds="One JSON line per request (request id, route, status, timings; PII redacted) and events, on stdout.",
        enforced="not applied",
        legal_note="Written to stdout only: the log collector's retention applies.",
    ),
)
