"""The operator's load test (``bench/load.py --scenario operator``): what a team meets right after loading
documents, for ragops and, with ``--peer``, for the LangChain POC a team would otherwise ship
(``bench/peer_poc.py``, in ``.venv-peer``: ``make peer``), in one run on the same cores.

Each step starts right after an ingest of documents the service has not seen, without warm-up: 220 long
Wikipedia passages (SQuADShifts new_wiki, a new slice per step) sent through the service's own ingest API
(ragops: ``POST /v1/documents`` into a new collection, 50 documents a request, with an editor key; the peer:
``POST /ingest``), timed, then the open loop at the step's rate: 50% repeated chat questions (20 of the slice's
questions, cached by ragops after their first answer; the peer has no cache), 30% searches, 20% new chat
questions (each asked once). ragops runs as shipped but for the generator (extractive): guards, the audit trail
and a key whose limits are counted (never hit) stay on.

SLOs: zero 5xx; ragops: cached chat p95 <= 50 ms, search <= 100 ms, new chat <= 500 ms; the peer, which has no
cache: every chat (repeated or new) <= 500 ms and search <= 100 ms. A repeated question's first ask in a step is
not a cache hit (there is no warm-up): it counts as a new chat (``bench/load_users.py`` reads ``cached`` in the
answer), for both services.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from itertools import takewhile
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.corpora import CORPORA  # noqa: E402
from bench.load_steps import SLO_RATE, Workload, run_step  # noqa: E402
from tests.live_server import LiveServer, ServerProcess, free_port  # noqa: E402

WIKI = CORPORA["new_wiki"]
PEER_PYTHON = ROOT / ".venv-peer" / "bin" / "python"
SLICE_PASSAGES = 220
SLICES = 7  # new_wiki holds 1,581 passages: at most 7 steps per service
REQUEST_DOCUMENTS = 50
REPEATED = 20
MIX = {"chat_cached": 50, "search": 30, "chat_unique": 20}
RAGOPS_SLO_MS = {"chat_cached": 50.0, "search": 100.0, "chat_unique": 500.0}
PEER_SLO_MS = {"search": 100.0, "chat_unique": 500.0}  # no cache: a repeated question is answered again


@dataclass(frozen=True)
class Slice:
    """One step's documents and questions: passages the service has not seen (new_wiki's first questions of
    them, repeated; then half the rest asked once each as chat, half as searches)."""

    documents: list[dict[str, str]]
    repeated: list[str]
    unique: list[str]
    searches: list[str]


def slices(count: int) -> list[Slice]:
    passages = [json.loads(line) for line in WIKI.passages.read_text().splitlines() if line.strip()]
    questions: dict[str, list[str]] = {}
    for line in WIKI.questions.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            questions.setdefault(record["passage_id"], []).append(record["question"])
    made = []
    for n in range(count):
        chosen = passages[n * SLICE_PASSAGES : (n + 1) * SLICE_PASSAGES]
        if len(chosen) < SLICE_PASSAGES:
            raise SystemExit(f"new_wiki holds {len(passages)} passages: at most {n} steps of {SLICE_PASSAGES}")
        asked = [q for p in chosen for q in questions.get(p["id"], [])]
        half = (len(asked) - REPEATED) // 2
        made.append(
            Slice(
                documents=[{"id": p["id"], "text": p["text"], "title": p.get("title", "")} for p in chosen],
                repeated=asked[:REPEATED],
                unique=asked[REPEATED : REPEATED + half],
                searches=asked[REPEATED + half :],
            )
        )
    return made


class PeerServer(ServerProcess):
    """``bench/peer_poc.py serve`` on a free port of 127.0.0.1, in its own venv."""

    def __init__(self, log_path: Path, timeout: float = 180.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [str(PEER_PYTHON), str(ROOT / "bench" / "peer_poc.py"), "serve", "--host", "127.0.0.1",
                "--port", str(self.port)]  # fmt: skip
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        super().__init__(argv, env, log_path, f"{self.url}/healthz", timeout)


@dataclass(frozen=True)
class Target:
    """A service under test: how to reach it, how it ingests a slice, and its SLOs."""

    name: str
    api: str  # "ragops" | "peer"
    server: LiveServer | PeerServer
    slo_ms: dict[str, float]
    api_key: str | None = None

    def ingest(self, piece: Slice, collection: str) -> float:
        """Seconds to ingest the slice through the service's API."""
        started = time.perf_counter()
        with httpx.Client(timeout=600) as client:
            if self.api == "peer":
                client.post(f"{self.server.url}/ingest", json={"documents": piece.documents}).raise_for_status()
            else:
                headers = {"Authorization": f"Bearer {self.api_key}"}
                for begin in range(0, len(piece.documents), REQUEST_DOCUMENTS):
                    body = {"documents": piece.documents[begin : begin + REQUEST_DOCUMENTS], "collection": collection}
                    client.post(f"{self.server.url}/v1/documents", json=body, headers=headers).raise_for_status()
        return time.perf_counter() - started


def create_key(data_dir: Path, env: dict[str, str]) -> str:
    """An editor key (it may ingest) with limits far above the load: counted on every request, never hit."""
    argv = [str(ROOT / ".venv" / "bin" / "ragops"), "--data-dir", str(data_dir), "keys", "create", "--tenant",
            "bench", "--role", "editor", "--rpm", "1000000", "--tokens-per-day", "1000000000", "--json"]  # fmt: skip
    done = subprocess.run(argv, env={**os.environ, **env}, check=True, capture_output=True, text=True, timeout=120)
    return str(json.loads(done.stdout)["key"])


def ragops_target(work: Path, env: dict[str, str], name: str = "ragops", source: Path | None = None) -> Target:
    """``source``: another checkout to serve from (``--baseline``), with this venv."""
    data_dir = work / name
    env = {**env, "RAGOPS_DATA_DIR": str(data_dir)}
    key = create_key(data_dir, env)
    server = LiveServer(env, work / f"{name}.log", source=source)
    return Target(name, "ragops", server, RAGOPS_SLO_MS, key)


def ladder_of(
    target: Target, pieces: list[Slice], args: Any, work: Path, profile: Path | None, start: float | None = None
) -> dict[str, Any]:
    """The target's ladder from ``start`` (bench/load.py's SLO rate when None), the server stopped after."""
    try:
        return run_ladder(target, pieces, args.rates, args.step_s, work, profile, start or SLO_RATE)
    finally:
        target.server.stop()


def run_ladder(target: Target, pieces: list[Slice], rates: list[float], step_s: float, work: Path,
               profile: Path | None, start: float) -> dict[str, Any]:  # fmt: skip
    """``start`` first, then up while the SLOs hold, or down until they do; each step on a fresh slice."""
    up = [start, *sorted(r for r in rates if r > start)]
    down = sorted((r for r in rates if r < start), reverse=True)
    left = iter(pieces)
    steps: list[dict[str, Any]] = []

    def step(rate: float) -> bool:
        piece = next(left, None)
        if piece is None:
            raise SystemExit(f"{target.name}: more than {SLICES} steps; pass fewer --rates")
        collection = f"wiki{len(steps)}"
        ingest_s = target.ingest(piece, collection)
        workload = Workload(Path(), piece.repeated, piece.unique, piece.searches, [])
        step_work = work / f"{target.name}-step-{len(steps)}"
        step_work.mkdir()
        extra = {"mix": MIX, "api": target.api, "api_key": target.api_key, "chat_collection": collection}
        result = run_step(
            servers=[target.server], workload=workload, rate=rate, step_s=step_s, unique=piece.unique,
            seed=len(steps), work=step_work, plan_extra=extra, slo_ms=target.slo_ms,
            profile=profile if profile is not None and not steps else None,
        )  # fmt: skip
        docs_per_s = round(len(piece.documents) / ingest_s, 1)
        steps.append({"ingest_s": round(ingest_s, 1), "ingest_passages_per_s": docs_per_s}
                     | asdict(result) | {"slo_met": result.slo_met})  # fmt: skip
        print(f"{target.name} {rate:g}/s after ingest {ingest_s:.1f}s: {result.slo_failures or 'SLOs met'}",
              file=sys.stderr)  # fmt: skip
        return result.slo_met

    passed = list(takewhile(step, up))
    highest = passed[-1] if passed else next((r for r in down if step(r)), None)
    return {"highest_rate_meeting_slos": highest, "steps": steps}


def baseline_checkout(commit: str, work: Path) -> Path:
    """The commit's tree, checked out beside this one (git worktree, removed with ``work``'s parent at the end)."""
    tree = work / "baseline-tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), commit], check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    return tree


def rss_with_llamacpp(work: Path, env: dict[str, str]) -> dict[str, float]:
    """Resident memory of an idle ``ragops serve`` with the embedded generator loaded: the API process and its
    llama.cpp worker (SmolLM2-135M), in MB."""
    env = {**env, "RAGOPS_DATA_DIR": str(work / "ragops-llamacpp"), "RAGOPS_GENERATOR": "llamacpp"}
    server = LiveServer(env, work / "ragops-llamacpp.log", timeout=300)
    try:
        api = psutil.Process(server.process.pid)
        workers = api.children(recursive=True)
        return {"api_process_mb": round(api.memory_info().rss / 2**20, 1),
                "llamacpp_worker_mb": round(sum(w.memory_info().rss for w in workers) / 2**20, 1)}  # fmt: skip
    finally:
        server.stop()


def measure(args: Any, work: Path, env: dict[str, str]) -> dict[str, Any]:
    """ragops, then (``--peer``) the peer POC, each on its own slices; both figures side by side."""
    pieces = slices(SLICES)  # both services see the same slices: each has seen none of them before
    results: dict[str, Any] = {"rss_idle_with_llamacpp": rss_with_llamacpp(work, env)}
    if args.baseline is not None:
        baseline = ragops_target(work, env, "baseline", baseline_checkout(args.baseline, work))
        profile = args.profile.with_suffix(".baseline.txt") if args.profile else None
        results["ragops_baseline"] = ladder_of(baseline, pieces, args, work, profile)
        results["baseline_commit"] = args.baseline
    results["ragops"] = ladder_of(ragops_target(work, env), pieces, args, work, args.profile)
    if args.peer:
        if not PEER_PYTHON.exists():
            raise SystemExit(f"{PEER_PYTHON} is missing: make peer")
        peer = Target("peer", "peer", PeerServer(work / "peer.log"), PEER_SLO_MS)
        results["peer"] = ladder_of(peer, pieces, args, work, None, start=args.peer_start)
        ours, theirs = results["ragops"]["highest_rate_meeting_slos"], results["peer"]["highest_rate_meeting_slos"]
        results["ratio_highest_rate"] = round(ours / theirs, 2) if ours and theirs else None
    return results
