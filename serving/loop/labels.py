"""Live prompt labels: the state store holds which version each label names now, so a label moved on one
replica (a promotion, a rollback, the canary analysis) is served by every replica within ``label_refresh_s``.

``prompts/registry.yaml`` (git) still holds the released versions and their hashes, and *declares* labels: the
store takes a declared label when it has none, or when git declares another version than the one it last took
(``declared``); a label moved at run time keeps its version until then, so a replica restarting with an older
registry.yaml does not undo a rollback. Every move is kept in ``prompt_label_moves``.

The server's prompt selector over these labels is ``serving.loop.live_prompts.LivePrompts``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from prompts.loader import Prompt
from prompts.registry import PromptRegistry
from serving.infra.clock import utc_now
from serving.infra.state_store import Cursor, StateStore
from serving.loop.lineage import LabelMoveRecord, ReleaseDraft, append_label_move, append_release

LABELS_LOCK = "ragops.prompt_labels"


@dataclass(frozen=True, kw_only=True)
class LabelMove:
    seq: int
    ts: str
    prompt: str
    label: str
    version: str
    previous: str | None
    actor: str
    reason: str


def move_label(cur: Cursor, prompt: str, label: str, version: str, actor: str, reason: str) -> LabelMove | None:
    """Point ``label`` at ``version`` inside the caller's write transaction (a canary rollback moves its label
    in the transaction that records the decision); None when it already names it."""
    cur.lock(LABELS_LOCK)
    rows = cur.execute("SELECT version FROM prompt_labels WHERE prompt = ? AND label = ?", (prompt, label))
    previous = rows[0]["version"] if rows else None
    if previous == version:
        return None
    now = utc_now()
    cur.execute(
        "INSERT INTO prompt_labels (prompt, label, version, declared, updated_at, updated_by) "
        "VALUES (?, ?, ?, NULL, ?, ?) ON CONFLICT (prompt, label) DO UPDATE SET version = excluded.version, "
        "updated_at = excluded.updated_at, updated_by = excluded.updated_by",
        (prompt, label, version, now, actor),
    )
    move = LabelMove(seq=0, ts=now, prompt=prompt, label=label, version=version, previous=previous, actor=actor,
                     reason=reason)  # fmt: skip
    return _record_move(cur, move)


def _record_move(cur: Cursor, move: LabelMove) -> LabelMove:
    seq = int(cur.execute("SELECT COALESCE(MAX(seq), 0) AS seq FROM prompt_label_moves")[0]["seq"]) + 1
    cur.execute(
        "INSERT INTO prompt_label_moves (seq, ts, prompt, label, version, previous, actor, reason) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (seq, move.ts, move.prompt, move.label, move.version, move.previous, move.actor, move.reason),
    )
    append_label_move(cur, move.prompt, LabelMoveRecord(label=move.label, from_version=move.previous,
                      to_version=move.version, actor=move.actor, reason=move.reason, move=seq))  # fmt: skip
    return replace(move, seq=seq)


class StoreLabels:
    """The label source of a server and of the CLI: the state store's ``prompt_labels``."""

    def __init__(self, state: StateStore) -> None:
        self._state = state

    def labels(self, name: str) -> dict[str, str]:
        with self._state.transaction() as cur:
            rows = cur.execute("SELECT label, version FROM prompt_labels WHERE prompt = ?", (name,))
        return {row["label"]: row["version"] for row in rows}

    def move(self, prompt: str, label: str, version: str, actor: str, reason: str) -> LabelMove | None:
        with self._state.transaction(write=True) as cur:
            return move_label(cur=cur, prompt=prompt, label=label, version=version, actor=actor, reason=reason)

    def moves(self, prompt: str, label: str | None = None) -> list[LabelMove]:
        """The moves of ``prompt``'s labels (of one label, when given), oldest first."""
        sql = "SELECT seq, ts, prompt, label, version, previous, actor, reason FROM prompt_label_moves WHERE prompt = ?"
        params = [prompt] if label is None else [prompt, label]
        with self._state.transaction() as cur:
            rows = cur.execute(sql + ("" if label is None else " AND label = ?") + " ORDER BY seq", params)
        return [LabelMove(**row) for row in rows]

    def release(self, prompt: Prompt, label: str, actor: str) -> str | None:
        """Point ``label`` at ``prompt``'s version and record the ``release`` (with the eval runs and gates of its
        content) in one transaction; returns the version the label named before."""
        with self._state.transaction(write=True) as cur:
            move = move_label(
                cur=cur, prompt=prompt.name, label=label, version=prompt.version, actor=actor, reason="promote"
            )
            previous = prompt.version if move is None else move.previous  # None: the label named it already
            append_release(cur, prompt.name, prompt.version,
                           ReleaseDraft(label, previous, prompt.content_hash, actor))  # fmt: skip
        return previous

    def rollback_target(self, prompt: str, label: str) -> str | None:
        """The version ``rollback`` returns ``label`` to: the moves replayed as a stack (a move pushes the version
        it left, a rollback pops), so rolling back twice goes back two versions; None when there is none."""
        earlier: list[str] = []
        for move in self.moves(prompt, label):
            if move.reason == "rollback":
                if earlier:
                    earlier.pop()
            elif move.previous is not None:
                earlier.append(move.previous)
        return earlier[-1] if earlier else None

    def adopt_declared(self, registry: PromptRegistry) -> list[LabelMove]:
        """Take the labels registry.yaml declares that the store has not taken yet (new labels, or a version git
        declares anew); labels moved at run time keep their version otherwise."""
        moves: list[LabelMove] = []
        with self._state.transaction(write=True) as cur:
            cur.lock(LABELS_LOCK)
            for name in registry.names():
                for label, version in registry.declared_labels(name).items():
                    moves += _adopt(cur, name, label, version, registry.history(name, label))
        return moves


def _adopt(cur: Cursor, prompt: str, label: str, declared: str, history: list[str]) -> list[LabelMove]:
    rows = cur.execute("SELECT version, declared FROM prompt_labels WHERE prompt = ? AND label = ?", (prompt, label))
    if rows and rows[0]["declared"] == declared:
        return []
    # A label the store takes for the first time left, in git, the version registry.yaml's history ends with:
    # recorded as the move's previous version, it is what a first rollback returns to.
    previous = rows[0]["version"] if rows else (history[-1] if history else None)
    now = utc_now()
    cur.execute(
        "INSERT INTO prompt_labels (prompt, label, version, declared, updated_at, updated_by) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (prompt, label) DO UPDATE SET version = excluded.version, "
        "declared = excluded.declared, updated_at = excluded.updated_at, updated_by = excluded.updated_by",
        (prompt, label, declared, declared, now, "registry.yaml"),
    )
    if previous == declared:
        return []
    move = LabelMove(seq=0, ts=now, prompt=prompt, label=label, version=declared, previous=previous,
                     actor="registry.yaml", reason="declared")  # fmt: skip
    return [_record_move(cur, move)]
