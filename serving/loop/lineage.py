"""Lineage: what touched a prompt version, in order. Eval runs, gates, releases, label moves, canary decisions,
drift baselines and profiles each add one event to the state store's ``lineage_events``, with the hashes of what
they used (dataset, corpus, prompt, models) in its body; ``ragops lineage PROMPT@VERSION`` reads them back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from serving.infra.clock import parse_stamp, utc_now
from serving.infra.state_store import Cursor, StateStore

LineageKind = Literal[
    "eval_run", "gate", "release", "label_move", "rollback", "canary_started", "canary_decision", "drift_baseline",
    "drift_check",
]  # fmt: skip
LINEAGE_LOCK = "ragops.lineage"


class ModelHashes(BaseModel):
    """The models an answer depends on, by content: what a lineage record says was run."""

    embedder: str = Field(description="The embedding model's id: name, backend and its weights' fingerprint.")
    embedder_files: dict[str, str] = Field(
        default_factory=dict, description="Files the embedder runs beside its weights (the int8 ONNX export): sha256."
    )
    generator: str = Field(description="llamacpp, vllm or extractive.")
    generator_model: str | None = Field(None, description="The GGUF's file name, or the model a vLLM server serves.")
    generator_sha256: str | None = Field(
        None, description="The GGUF's sha256; null for a model behind an API (only its name is known) or none."
    )
    generator_build: str | None = Field(
        None,
        description="The llama.cpp build that ran the GGUF: library version and CPU instruction sets "
        "(serving.answering.llamacpp.build). Builds decode differently, so the gate compares runs of one build only.",
    )


class RunLineage(BaseModel):
    """What an eval run's figures depend on, by content: dataset, corpus, prompt version and models."""

    dataset: str = Field(description="sha256 of the samples as run.")
    corpus: str = Field(description="Digest of the corpus' documents and their content hashes, as indexed.")
    prompt: str = Field(description="NAME@VERSION.")
    prompt_hash: str
    models: ModelHashes


class EvalRunRecord(BaseModel):
    """The body of an ``eval_run`` event."""

    suite: str
    results: str | None = Field(None, description="Where its results.json was written.")
    means: dict[str, float | None]
    lineage: RunLineage


class GateRecord(BaseModel):
    """The body of a ``gate`` event: a candidate version against a baseline on one suite."""

    suite: str
    passed: bool
    regressions: list[str] = Field(description="The metrics that regressed.")
    baseline: str = Field(description="The baseline's NAME@VERSION.")
    baseline_lineage: RunLineage | None = Field(None, description="Null for a baseline made before lineage.")
    lineage: RunLineage


class ReleaseRecord(BaseModel):
    """The body of a ``release`` event: a label moved to a version, and the evals it was released on."""

    label: str
    previous: str | None
    prompt_hash: str
    actor: str | None = None
    evidence: list[int] = Field(description="seq of this version's eval_run and gate events, oldest first.")


class LabelMoveRecord(BaseModel):
    """The body of a ``label_move`` event (``rollback`` when a person rolled the label back)."""

    label: str
    from_version: str | None
    to_version: str
    actor: str | None
    reason: str
    move: int = Field(description="seq of the move in prompt_label_moves.")


@dataclass(frozen=True, kw_only=True)
class LineageEvent:
    seq: int
    ts: datetime
    kind: LineageKind
    prompt: str | None
    version: str | None
    body: dict[str, Any]


class Lineage:
    def __init__(self, state: StateStore) -> None:
        self._state = state

    def record(self, kind: LineageKind, prompt: str | None, version: str | None, body: dict[str, Any]) -> LineageEvent:
        with self._state.transaction(write=True) as cur:
            return append_event(cur, kind, prompt, version, body)

    def history(self, prompt: str, version: str | None = None) -> list[LineageEvent]:
        """The events of ``prompt`` (of one ``version`` of it, when given), oldest first."""
        with self._state.transaction() as cur:
            return history(cur, prompt, version)

    def release(self, prompt: str, version: str, record: ReleaseDraft) -> LineageEvent:
        """A ``release`` event in a transaction of its own (see ``append_release`` to join the caller's)."""
        with self._state.transaction(write=True) as cur:
            return append_release(cur, prompt, version, record)


def history(cur: Cursor, prompt: str, version: str | None = None) -> list[LineageEvent]:
    sql = "SELECT seq, ts, kind, prompt, version, body FROM lineage_events WHERE prompt = ?"
    params: list[Any] = [prompt]
    if version is not None:
        sql += " AND version = ?"
        params.append(version)
    rows = cur.execute(sql + " ORDER BY seq", params)
    return [
        LineageEvent(seq=r["seq"], ts=parse_stamp(r["ts"]), kind=r["kind"], prompt=r["prompt"], version=r["version"],
                     body=json.loads(r["body"]))
        for r in rows
    ]  # fmt: skip


@dataclass(frozen=True)
class ReleaseDraft:
    """What the code that moves a label knows of a release; the evidence is looked up when it is recorded."""

    label: str
    previous: str | None
    prompt_hash: str
    actor: str | None = None


def evaluated_by(events: list[LineageEvent], prompt_hash: str) -> list[int]:
    """The eval runs and gates among ``events`` that ran exactly this prompt content."""
    found = []
    for event in events:
        if event.kind in ("eval_run", "gate"):
            record = (EvalRunRecord if event.kind == "eval_run" else GateRecord).model_validate(event.body)
            if record.lineage.prompt_hash == prompt_hash:
                found.append(event.seq)
    return found


def append_release(cur: Cursor, prompt: str, version: str, draft: ReleaseDraft) -> LineageEvent:
    """A ``release`` event inside the caller's write transaction (the one that moves the label), naming the eval
    runs and gates this version's content went through."""
    evidence = evaluated_by(history(cur, prompt, version), draft.prompt_hash)
    record = ReleaseRecord(label=draft.label, previous=draft.previous, prompt_hash=draft.prompt_hash,
                           actor=draft.actor, evidence=evidence)  # fmt: skip
    return append_event(cur, "release", prompt, version, record.model_dump(mode="json"))


def append_event(
    cur: Cursor, kind: LineageKind, prompt: str | None, version: str | None, body: dict[str, Any]
) -> LineageEvent:
    """One event, inside the caller's write transaction (so a rollback and its lineage commit together)."""
    cur.lock(LINEAGE_LOCK)
    seq = int(cur.execute("SELECT COALESCE(MAX(seq), 0) AS seq FROM lineage_events")[0]["seq"]) + 1
    ts = utc_now()
    text = json.dumps(body, sort_keys=True, ensure_ascii=False, default=str)
    cur.execute(
        "INSERT INTO lineage_events (seq, ts, kind, prompt, version, body) VALUES (?, ?, ?, ?, ?, ?)",
        (seq, ts, kind, prompt, version, text),
    )
    return LineageEvent(seq=seq, ts=parse_stamp(ts), kind=kind, prompt=prompt, version=version, body=json.loads(text))


def append_label_move(cur: Cursor, prompt: str, record: LabelMoveRecord) -> None:
    """A label move in the lineage of both versions it touched (the one the label names now, and the one it
    left), inside the transaction that moves it."""
    kind: LineageKind = "rollback" if record.reason == "rollback" else "label_move"
    for version in dict.fromkeys(v for v in (record.to_version, record.from_version) if v):
        append_event(cur, kind, prompt, version, record.model_dump(mode="json"))
