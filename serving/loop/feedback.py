"""User feedback on kept answers: one thumbs up or down per answer and rater key (a rater who changes their mind
replaces their own rating; another reader's rating of the same answer is a rating of its own, never a
replacement), with an optional comment and correction, in the state store's ``feedback`` table, in the answer's
tenant. On a server without keys every caller is the one anonymous key: one rating per answer, as before keys.

Readers: the canary analysis (``answer_ratings`` / ``down_rates``: the ratings of a prompt's answers given
since a moment, per version), ``ragops feedback export`` (``FeedbackStore.cases``: rated answers with what
was asked, answered and shown) and retention (``serving.loop.answer_log.answers_before`` deletes feedback with
its answer; ``serving.rights.retention`` runs it at start and daily).
Comments and corrections are redacted before they are kept, like the answers themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from serving.governance.access import ANONYMOUS_KEY_ID
from serving.infra.clock import parse_stamp, stamp, utc_now
from serving.infra.state_store import Cursor, Row, StateStore
from serving.loop.answer_log import AnswerRecord, answer_columns, kept_text

Rating = Literal["up", "down"]


@dataclass(frozen=True, kw_only=True)
class Feedback:
    """One answer's rating as kept (comment and correction redacted)."""

    answer_id: str
    tenant: str
    ts: datetime
    rating: Rating
    comment: str | None
    correction: str | None
    key_id: str  # the API key that rated it (ANONYMOUS_KEY_ID on a server without keys)


@dataclass(frozen=True)
class AnswerRating:
    """A rating joined with the answer's version and time: what the canary analysis compares per arm."""

    answer_id: str
    prompt_version: str
    answered_at: datetime
    rated_at: datetime
    rating: Rating


@dataclass(frozen=True)
class DownRate:
    """How many of a prompt version's answers were rated, how many of those thumbs-down, and by how many raters
    (``RATER``)."""

    prompt_version: str
    rated: int
    down: int
    raters: int

    @property
    def rate(self) -> float | None:
        """Share of rated answers rated down; None when none was rated (no evidence, not a rate of 0)."""
        return self.down / self.rated if self.rated else None


@dataclass(frozen=True)
class Rated:
    """What ``FeedbackStore.rate`` kept, with the version's recent thumbs-down rate (for its metric and alert)."""

    feedback: Feedback
    prompt_name: str
    recent: DownRate


@dataclass(frozen=True)
class FeedbackCase:
    """A rated answer with everything the export needs: what was asked, answered, shown, and what the user said."""

    answer: AnswerRecord
    feedback: Feedback


_FEEDBACK_COLUMNS = "answer_id, tenant, ts, rating, comment, correction, key_id"
_UPSERT = (
    f"INSERT INTO feedback ({_FEEDBACK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (answer_id, key_id) DO UPDATE SET ts = excluded.ts, rating = excluded.rating, "
    "comment = excluded.comment, correction = excluded.correction"
)
# Who a rating counts as, for how many raters a rate stands on: its key; on a server without keys (every caller
# the anonymous key) the user the answer was given to, the only identity there is.
RATER = f"CASE WHEN f.key_id = '{ANONYMOUS_KEY_ID}' THEN 'user:' || COALESCE(a.user_hash, '') ELSE f.key_id END"

# Ratings are read from the feedback side (its ts index), each joined to its answer by primary key: ratings are
# fewer than answers, and a rating is never older than its answer, so ``f.ts >= since`` only narrows the scan.
# CROSS JOIN keeps SQLite's planner from starting at the answers' index instead (50 ms against 2 ms for a
# version's latest 100 ratings among 20,000 answers, bench/feedback.py); Postgres reads it as the inner join.
_RATED_SINCE = (
    "FROM feedback f CROSS JOIN answers a WHERE a.id = f.answer_id AND f.ts >= ? AND a.prompt_name = ? AND a.ts >= ?"
)


def answer_ratings(state: StateStore, prompt: str, since: datetime, version: str | None = None) -> list[AnswerRating]:
    """Ratings of ``prompt``'s answers given at or after ``since`` (of one ``version`` when given), in the order
    the answers were given. Only answers still kept count (retention deletes feedback with its answer)."""
    sql = f"SELECT f.answer_id, a.prompt_version, a.ts AS answered_at, f.ts AS rated_at, f.rating {_RATED_SINCE}"
    params: list[object] = [stamp(since), prompt, stamp(since)]
    if version is not None:
        sql += " AND a.prompt_version = ?"
        params.append(version)
    with state.transaction() as cur:
        rows = cur.execute(sql + " ORDER BY a.ts, f.answer_id, f.key_id", params)
    return [
        AnswerRating(r["answer_id"], r["prompt_version"], parse_stamp(r["answered_at"]), parse_stamp(r["rated_at"]),
                     r["rating"])
        for r in rows
    ]  # fmt: skip


def down_rates(state: StateStore, prompt: str, since: datetime) -> dict[str, DownRate]:
    """Per version of ``prompt``: ratings of answers given since ``since``, how many were down, by how many raters."""
    sql = (
        "SELECT a.prompt_version, COUNT(*) AS rated, SUM(CASE WHEN f.rating = 'down' THEN 1 ELSE 0 END) AS down, "
        f"COUNT(DISTINCT {RATER}) AS raters {_RATED_SINCE} "
        "GROUP BY a.prompt_version"
    )
    with state.transaction() as cur:
        rows = cur.execute(sql, [stamp(since), prompt, stamp(since)])
    return {
        r["prompt_version"]: DownRate(r["prompt_version"], int(r["rated"]), int(r["down"] or 0), int(r["raters"]))
        for r in rows
    }


class FeedbackStore:
    """The ``feedback`` table: ``rate`` (upsert) and ``cases`` (rated answers, for the export). ``window``: how
    many of a version's latest ratings its recent thumbs-down rate covers."""

    def __init__(self, state: StateStore, window: int = 100) -> None:
        self._state = state
        self._window = window

    def rate(
        self, answer: AnswerRecord, rating: Rating, comment: str | None = None, correction: str | None = None,
        key_id: str = ANONYMOUS_KEY_ID,
    ) -> Rated:  # fmt: skip
        """Keep ``key_id``'s ``rating`` of ``answer`` (replacing that key's earlier one, never another key's): the
        answer's tenant, text redacted."""
        feedback = Feedback(
            answer_id=answer.id, tenant=answer.tenant, ts=parse_stamp(utc_now()), rating=rating,
            comment=_redacted(comment), correction=_redacted(correction), key_id=key_id,
        )  # fmt: skip
        with self._state.transaction(write=True) as cur:
            cur.execute(_UPSERT, _feedback_row(feedback))
            recent = _recent_down_rate(cur, answer.prompt_name, answer.prompt_version, self._window)
        return Rated(feedback, answer.prompt_name, recent)

    def cases(
        self, since: datetime | None = None, rating: Rating | None = None, tenant: str | None = None
    ) -> list[FeedbackCase]:
        """Rated answers (rated at or after ``since``; of one ``rating``; of one ``tenant``), oldest answer first."""
        where, params = ["f.ts >= ?"], [stamp(since or datetime(1970, 1, 1))]
        for column, value in (("f.rating", rating), ("f.tenant", tenant)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        feedback = ", ".join(f"f.{c} AS feedback_{c}" for c in _FEEDBACK_COLUMNS.split(", "))
        sql = (
            f"SELECT {answer_columns('a', 'answer_')}, {feedback} FROM feedback f JOIN answers a ON a.id = f.answer_id "
            f"WHERE {' AND '.join(where)} ORDER BY a.ts, a.id, f.ts"
        )
        with self._state.transaction() as cur:
            rows = cur.execute(sql, params)
        return [FeedbackCase(AnswerRecord.from_row(r, "answer_"), _feedback_from_row(r, "feedback_")) for r in rows]


def _recent_down_rate(cur: Cursor, prompt: str, version: str, window: int) -> DownRate:
    """The version's latest ``window`` ratings (by when they were given), as a thumbs-down rate."""
    rows = cur.execute(
        f"SELECT f.rating, {RATER} AS rater FROM feedback f CROSS JOIN answers a "  # newest first: see _RATED_SINCE
        "WHERE a.id = f.answer_id AND a.prompt_name = ? AND a.prompt_version = ? ORDER BY f.ts DESC LIMIT ?",
        [prompt, version, window],
    )
    return DownRate(version, len(rows), sum(r["rating"] == "down" for r in rows), len({r["rater"] for r in rows}))


def _redacted(text: str | None) -> str | None:
    text = text.strip() if text else None
    return kept_text(text) if text else None


def _feedback_row(feedback: Feedback) -> tuple[object, ...]:
    return (
        feedback.answer_id, feedback.tenant, stamp(feedback.ts), feedback.rating, feedback.comment,
        feedback.correction, feedback.key_id,
    )  # fmt: skip


def _feedback_from_row(row: Row, prefix: str = "") -> Feedback:
    fields = {column: row[prefix + column] for column in _FEEDBACK_COLUMNS.split(", ")}
    return Feedback(**fields | {"ts": parse_stamp(fields["ts"])})
