"""What running llama.cpp in a worker process costs, and what it buys (issue 20's goals).

1. **Process boundary overhead**: answers through the supervised worker (a JSON line per token over a pipe), the
   production prompt (v2, with its answer grammar) over 3 passages of Disfl-QA questions 0..N (the gold passage
   plus two others). ``boundary_ms``: the API side's wall time for the whole answer (job written to the pipe to
   ``Done`` read) minus the worker's own time on it (``Done.worker_ms``): what the process boundary adds, free of
   the model's own variance. Beside it, the same answers from the same engine class run in this process, one
   after the other with the worker's (``paired_difference_ms``): noisier (each answer's own variance on a shared
   2-core machine), and a check that the tokens match (same engine, greedy).
2. **Crash recovery**: a real ``ragops serve`` on 127.0.0.1 streams long answers (a test-only prompt that makes
   SmolLM2 talk for seconds); after the first delta of each answer the worker gets SIGKILL (or SIGILL). Measured
   on the client: crash to the first byte of what replaces the answer (the ``replaced`` event), crash to
   ``/readyz`` saying ``ready`` again (polled every 20 ms), crash to the next answer from llama.cpp; and every
   status code seen, crash rounds and the plain answers between them (5xx must be 0).

Run: ``.venv/bin/python bench/llamacpp_worker.py --out bench/results/llamacpp_worker.json`` (about 4 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.corpora import DISFL_QA, percentile  # noqa: E402
from prompts.loader import PromptPassage, load_prompt  # noqa: E402
from serving.answering.llamacpp.engine import LlamaEngine  # noqa: E402
from serving.answering.llamacpp.model_file import default_model_path  # noqa: E402
from serving.answering.llamacpp.protocol import Delta, Done, Job, Started  # noqa: E402
from serving.answering.llamacpp.supervisor import WorkerConfig, WorkerSupervisor  # noqa: E402
from serving.contracts.generation import GenerationRequest  # noqa: E402
from tests.live_server import LONG_ANSWER_PROMPT, LiveServer, llamacpp_worker, long_answer_prompts  # noqa: E402


def requests(count: int) -> list[GenerationRequest]:
    prompt = load_prompt("rag_answer", "v2")
    passages = {p["id"]: p["text"] for p in map(json.loads, DISFL_QA.passages.read_text().splitlines())}
    ids = list(passages)
    made = []
    for number, line in enumerate(DISFL_QA.questions.read_text().splitlines()[:count]):
        question = json.loads(line)
        shown = [question["passage_id"], ids[(number * 7) % len(ids)], ids[(number * 13 + 1) % len(ids)]]
        shown_passages = [PromptPassage(i + 1, doc, passages[doc]) for i, doc in enumerate(shown)]
        messages = prompt.render(question["question"], shown_passages)
        made.append(GenerationRequest(messages, question["question"], shown_passages, prompt.params))
    return made


def boundary_overhead(count: int) -> dict[str, Any]:
    config = WorkerConfig(default_model_path(ROOT / ".ragops" / "models"), timeout_s=120)
    engine = LlamaEngine(config.model_path, config.threads, config.context, config.timeout_s)
    supervisor = WorkerSupervisor(config)
    assert supervisor.start().up
    worker = supervisor.worker()
    in_process_ms, worker_ms, added_ms, boundary_ms, tokens = [], [], [], [], []
    mismatches = 0
    try:
        for number, request in enumerate(requests(count + 2)):
            job = Job.of(number + 1, request)
            started = time.perf_counter()
            local = list(engine.run(job, lambda: False))[-1]
            local_ms = (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            events = worker.submit(job)
            while not isinstance(remote := events.get(timeout=120), Done):
                assert isinstance(remote, Started | Delta), remote
            remote_ms = (time.perf_counter() - started) * 1000
            worker.release(job.id)
            assert isinstance(local, Done) and isinstance(remote, Done), (local, remote)
            if number < 2:
                continue  # warm-up: page cache, grammar compilation, first allocations
            mismatches += remote.text != local.text
            in_process_ms.append(local_ms)
            worker_ms.append(remote_ms)
            added_ms.append(remote_ms - local_ms)
            boundary_ms.append(remote_ms - remote.worker_ms)
            tokens.append(local.completion_tokens)
    finally:
        supervisor.close()
    return {
        "answers": len(added_ms),
        "completion_tokens_median": statistics.median(tokens),
        "boundary_ms": summary(boundary_ms),  # the API's wall time minus the worker's own time on the job
        "in_process_ms": summary(in_process_ms),
        "worker_ms": summary(worker_ms),
        "paired_difference_ms": summary(added_ms),  # the same answer both ways, one after the other
        "answers_differing": mismatches,
    }


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 50), 2),
        "p95": round(percentile(values, 95), 2),
        "mean": round(statistics.fmean(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


def crash_recovery(rounds: int, models_dir: Path | None) -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    prompts = long_answer_prompts(data / "prompts")
    env = {"RAGOPS_DATA_DIR": str(data), "RAGOPS_PROMPTS_DIR": str(prompts), "RAGOPS_PROMPT": LONG_ANSWER_PROMPT,
           "RAGOPS_OUTPUT_GUARD": "report", "RAGOPS_ANSWER_CACHE_SIZE": "0",
           "RAGOPS_GENERATION_TIMEOUT_S": "60"}  # fmt: skip
    if models_dir is not None:
        env["RAGOPS_MODELS_DIR"] = str(models_dir)
    server = LiveServer(env, data / "server.log")
    statuses: dict[int, int] = {}
    first_byte_ms: list[float] = []
    ready_ms: list[float] = []
    answered_ms: list[float] = []
    skipped = 0
    records = [json.loads(line) for line in DISFL_QA.passages.read_text().splitlines()[:60]]
    ingested = {record["id"] for record in records}
    questions = [q["question"] for q in map(json.loads, DISFL_QA.questions.read_text().splitlines())
                 if q["passage_id"] in ingested]  # fmt: skip
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            client.post("/v1/documents", json={"documents": records}).raise_for_status()
            unused = iter(questions)
            while len(first_byte_ms) < rounds:
                fault = signal.SIGKILL if len(first_byte_ms) % 2 else signal.SIGILL
                pid = llamacpp_worker(server)
                first_byte, crashed_at = stream_and_crash(client, next(unused), pid, fault, statuses)
                if crashed_at:  # the signal was sent: wait until the server has reaped that worker and has a new one
                    while psutil.pid_exists(pid) or client.get("/readyz").json()["status"] != "ready":
                        time.sleep(0.02)
                if not first_byte:  # abstained, or ended before the signal landed: ask the next question
                    skipped += 1
                    continue
                first_byte_ms.append((first_byte - crashed_at) * 1000)
                ready_ms.append((time.perf_counter() - crashed_at) * 1000)
                while True:  # the next question that llama.cpp answers (not one that abstains)
                    response = client.post("/v1/chat", json={"question": next(unused)})
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                    if response.json()["generator"] == "llamacpp":
                        break
                answered_ms.append((time.perf_counter() - crashed_at) * 1000)
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)
    return {
        "rounds": rounds,
        "questions_without_a_crash": skipped,  # abstained, or the answer was out before the signal landed
        "crash_to_fallback_first_byte_ms": summary(first_byte_ms),
        "crash_to_ready_ms": summary(ready_ms),
        "crash_to_next_llamacpp_answer_ms": summary(answered_ms),
        "status_codes": {str(code): count for code, count in sorted(statuses.items())},
        "server_errors": sum(count for code, count in statuses.items() if code >= 500),
    }


def stream_and_crash(
    client: httpx.Client, question: str, pid: int, fault: signal.Signals, statuses: dict[int, int]
) -> tuple[float, float]:
    """Streams an answer, sends ``fault`` to the worker after the first delta; returns when the replacement's
    first byte (the ``replaced`` event) arrived and when the signal was sent (0.0: not sent, or no replacement)."""
    crashed_at = first_byte = 0.0
    with client.stream("POST", "/v1/chat", json={"question": question, "stream": True}) as response:
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event["type"] == "delta" and not crashed_at:
                crashed_at = time.perf_counter()
                os.kill(pid, fault)
            elif event["type"] == "replaced" and not first_byte:
                first_byte = time.perf_counter()
    return first_byte, crashed_at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answers", type=int, default=60, help="answers per path for the overhead")
    parser.add_argument("--rounds", type=int, default=10, help="crashes for the recovery figures")
    parser.add_argument("--models-dir", type=Path, default=None, help="RAGOPS_MODELS_DIR (an ONNX export to reuse)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = {
        "machine": {"cpus": os.cpu_count()},
        "boundary": boundary_overhead(args.answers),
        "crash_recovery": crash_recovery(args.rounds, args.models_dir),
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
