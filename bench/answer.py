"""End-to-end answer benchmark on the bundled Disfl-QA corpus, through a real ``ragops serve`` on 127.0.0.1.

For each generator (extractive; llamacpp; vllm when ``make vllm`` has built the engine):
- quality on the first N questions: exact match and token F1 against the gold answers (SQuAD normalisation),
  and citation accuracy (a chunk the answer cites contains a gold answer);
- ``POST /v1/chat`` latency p50/p95 (client wall time, sequential, unique questions so nothing is cached),
  pipeline overhead outside generation (server ``total - generate``) p95, tokens/s of generation;
- with streaming, time to the first delta event (client side); decoding tokens/s after the first token; how
  long the first sentence waits for the output guard after the model's first token (server ``first_shown``
  minus ``first_token``: the sentence's generation plus its check);
- cache hits: the same questions again (server-side ``total`` and client wall time).
Then: requests/s of extractive ``/v1/chat`` under 16 concurrent clients (unique questions; first with the
passages' sentences not yet embedded, then again with them cached), with error count; and
abstention at the configured threshold: how often answerable questions abstain, and how often questions whose
passage was removed from the collection do.

Run: ``.venv/bin/python bench/answer.py`` (about 10 minutes on 2 cores). ``--out FILE`` writes the JSON. For
first-token latency alone: ``--generators llamacpp --questions 10 --stream-questions 10 --extractive-questions 5
--concurrent-requests 0 --abstention-questions 0``.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.corpora import DISFL_QA, percentile  # noqa: E402
from evals.metrics import METRICS, Sample  # noqa: E402
from serving.contracts.answer import Answer  # noqa: E402
from tests import vllm_server  # noqa: E402
from tests.live_server import LiveServer  # noqa: E402

COLLECTION = "bench"


def score(metric: str, question: dict[str, Any], body: dict[str, Any]) -> float:
    sample = Sample(id=question["id"], question=question["question"], answers=tuple(question["answers"]))
    return METRICS[metric](sample, Answer.model_validate(body)) or 0.0


def ask(client: httpx.Client, question: str) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    response = client.post("/v1/chat", json={"question": question, "collection": COLLECTION})
    response.raise_for_status()
    return response.json(), (time.perf_counter() - started) * 1000


def first_token_ms(client: httpx.Client, question: str) -> tuple[float, dict[str, Any]]:
    """Client time to the first delta event, and the answer the stream ends with (read to the end, so the
    server's timings of the same request come with it)."""
    started = time.perf_counter()
    first: float | None = None
    payload = {"question": question, "collection": COLLECTION, "stream": True}
    with client.stream("POST", "/v1/chat", json=payload) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if event["type"] == "delta" and first is None:
                first = (time.perf_counter() - started) * 1000
            elif event["type"] == "answer" and first is not None:
                return first, event
    raise RuntimeError("stream without a delta or an answer")


def held_ms(answer: dict[str, Any]) -> float | None:
    """How long the first sentence waited after the model's first token before it was sent."""
    timings = answer["timings_ms"]
    if "first_shown" not in timings or "first_token" not in timings:
        return None
    return float(timings["first_shown"] - timings["first_token"])


def run_generator(server: LiveServer, questions: list[dict[str, Any]], stream_questions: int) -> dict[str, Any]:
    with httpx.Client(base_url=server.url, timeout=120) as client:
        ask(client, "warm-up question about the Normans")
        rows = [(q, *ask(client, q["question"])) for q in questions]
        streamed = [first_token_ms(client, q["question"] + " please") for q in questions[:stream_questions]]
        hits = [ask(client, q["question"]) for q in questions]
    bodies = [body for _, body, _ in rows]
    ttft = [ms for ms, _ in streamed]
    held = [ms for _, answer in streamed if (ms := held_ms(answer)) is not None]
    generated = [b for b in bodies if not b["abstained"]]
    # Decoding speed: tokens after the first, over the time after the first token (prompt evaluation excluded).
    tokens = sum(max(0, b["usage"]["completion_tokens"] - 1) for b in generated)
    decode_s = sum(b["timings_ms"]["total"] - b["timings_ms"]["first_token"] for b in generated) / 1000
    return {
        "questions": len(rows),
        "answered_by": dict(collections.Counter(b["generator"] for b in bodies)),
        **{
            metric: round(sum(score(metric, q, b) for q, b, _ in rows) / len(rows), 3)
            for metric in ("exact_match", "token_f1", "citation_accuracy")
        },
        "latency_p50_ms": round(percentile([ms for *_, ms in rows], 50), 1),
        "latency_p95_ms": round(percentile([ms for *_, ms in rows], 95), 1),
        "overhead_p95_ms": round(
            percentile([b["timings_ms"]["total"] - b["timings_ms"]["generate"] for b in bodies], 95), 1
        ),
        "decode_tokens_per_s": round(tokens / decode_s, 1) if stream_questions and decode_s and tokens else None,
        "ttft_p50_ms": round(percentile(ttft, 50), 1) if ttft else None,
        "ttft_p95_ms": round(percentile(ttft, 95), 1) if ttft else None,
        "first_sentence_held_p50_ms": round(percentile(held, 50), 1) if held else None,
        "first_sentence_held_p95_ms": round(percentile(held, 95), 1) if held else None,
        "streams_replaced": sum(answer["fallback"] is not None for _, answer in streamed),
        "cache_hit_server_p95_ms": round(percentile([b["timings_ms"]["total"] for b, _ in hits], 95), 2),
        "cache_hit_client_p50_ms": round(percentile([ms for _, ms in hits], 50), 2),
        "cache_hit_client_p95_ms": round(percentile([ms for _, ms in hits], 95), 2),
        "all_cached": all(b["cached"] for b, _ in hits),
    }


def concurrency(server: LiveServer, questions: list[str], clients: int) -> dict[str, Any]:
    errors = 0

    def one(question: str) -> bool:
        try:
            response = http.post("/v1/chat", json={"question": question, "collection": COLLECTION})
            return response.status_code == 200
        except httpx.HTTPError:
            return False

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    with httpx.Client(base_url=server.url, timeout=60, limits=limits) as http:
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(one, questions))
        elapsed = time.perf_counter() - started
    errors = results.count(False)
    return {
        "clients": clients,
        "requests": len(questions),
        "errors": errors,
        "requests_per_s": round(len(questions) / elapsed, 1),
    }


def server_env(data_dir: Path, models_dir: Path, **extra: str) -> dict[str, str]:
    return {"RAGOPS_DATA_DIR": str(data_dir), "RAGOPS_MODELS_DIR": str(models_dir), **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=40, help="questions for the LLM generators")
    parser.add_argument("--extractive-questions", type=int, default=300)
    parser.add_argument("--stream-questions", type=int, default=10)
    parser.add_argument("--concurrent-requests", type=int, default=400, help="0: no concurrency run")
    parser.add_argument("--abstention-questions", type=int, default=200, help="of each kind; 0: no abstention run")
    parser.add_argument("--generators", default="extractive,llamacpp,vllm", help="comma-separated subset")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ragops-bench-answer-"))
    models_dir = ROOT / ".ragops" / "models"
    data_dir = work / "data"
    with DISFL_QA.questions.open() as handle:
        all_questions = [json.loads(line) for line in handle]
    records = [json.loads(line) for line in DISFL_QA.passages.open()]
    held_out = {r["id"] for r in records[-100:]}  # their questions become unanswerable in the second collection

    results: dict[str, Any] = {"machine": "2 cores, no GPU", "generators": {}}
    wanted = set(args.generators.split(","))
    vllm = vllm_server.VllmServer(work / "vllm.log") if "vllm" in wanted and vllm_server.available() else None
    try:
        configs: list[tuple[str, int, dict[str, str]]] = [
            ("extractive", args.extractive_questions, {}),
            ("llamacpp", args.questions, {}),
        ]
        if vllm is not None:
            configs.append(
                ("vllm", args.questions, {"RAGOPS_VLLM_BASE_URL": vllm.base_url, "RAGOPS_VLLM_MODEL": "smollm2"})
            )
        for generator, count, extra in [c for c in configs if c[0] in wanted or c[0] == "extractive"]:
            server = LiveServer(
                server_env(data_dir, models_dir, RAGOPS_GENERATOR=generator, **extra),
                work / f"{generator}.log",
                timeout=300,
            )
            try:
                if generator == "extractive":  # first server: fill the collections (the embedding cache is shared)
                    with httpx.Client(base_url=server.url, timeout=600) as client:
                        for start in range(0, len(records), 500):
                            batch = {"documents": records[start : start + 500], "collection": COLLECTION}
                            client.post("/v1/documents", json=batch).raise_for_status()
                            kept = [r for r in records[start : start + 500] if r["id"] not in held_out]
                            client.post(
                                "/v1/documents", json={"documents": kept, "collection": "heldout"}
                            ).raise_for_status()
                questions = all_questions[:count]
                results["generators"][generator] = run_generator(
                    server, questions, args.stream_questions if generator != "extractive" else 0
                )
                if generator == "extractive":
                    # Unique questions (no answer-cache hits). The first pass meets passages whose sentences
                    # the extractive generator has not embedded yet; the second asks other questions about
                    # the same passages, as a service in steady state does.
                    extras(
                        results=results, server=server, questions=all_questions, held_out=held_out,
                        concurrent_requests=args.concurrent_requests, abstention_questions=args.abstention_questions,
                    )  # fmt: skip
            finally:
                server.stop()
    finally:
        if vllm is not None:
            vllm.stop()
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


def extras(
    results: dict[str, Any], server: LiveServer, questions: list[dict[str, Any]], held_out: set[str],
    concurrent_requests: int, abstention_questions: int,
) -> None:  # fmt: skip
    """The extractive server's extra runs: concurrency and abstention (each skipped when its count is 0)."""
    if concurrent_requests:
        chosen = questions[1000 : 1000 + concurrent_requests]
        results["concurrency_extractive"] = {
            label: concurrency(server, [q["question"] + f" ({label} {i})" for i, q in enumerate(chosen)], 16)
            for label in ("cold", "warm")
        }
    if abstention_questions:
        results["abstention"] = abstention(server, questions, held_out, abstention_questions)


def abstention(
    server: LiveServer, questions: list[dict[str, Any]], held_out: set[str], count: int = 200
) -> dict[str, Any]:
    answerable = [q for q in questions[2000 : 2000 + count] if q["passage_id"] not in held_out]
    unanswerable = [q for q in questions if q["passage_id"] in held_out][:count]
    with httpx.Client(base_url=server.url, timeout=60) as client:

        def rate(items: list[dict[str, Any]]) -> float:
            flags = [
                client.post("/v1/chat", json={"question": q["question"], "collection": "heldout"}).json()["abstained"]
                for q in items
            ]
            return round(float(sum(flags)) / len(flags), 3)

        return {
            "answerable_questions": len(answerable),
            "abstained_when_answerable": rate(answerable),
            "unanswerable_questions": len(unanswerable),
            "abstained_when_passage_removed": rate(unanswerable),
        }


if __name__ == "__main__":
    main()
