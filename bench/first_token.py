"""llama.cpp's first token, in process (issue 27, item 6): how long the embedded generator takes from a job's start
to its first streamed token, and how much of the prompt it evaluates to get there.

Prompts as the production pipeline builds them: ``rag_answer@v2`` (its system prompt, then the passages and the
question; decoded under its answer grammar) over Disfl-QA questions, each shown its gold passage and three others
(``chat_top_k`` 4), cut to the 3 sentences that best match the question (``context_sentences`` 3, the pipeline's
context compression with the bundled embedder; ``--sentences 0``: whole passages).

Engines (``LlamaEngine``, as the worker holds it), each in this process with its own KV cache, and every question
asked of each in turn (the order rotating), so the machine's load falls on all alike:
- ``before``: as at HEAD before issue 27: llama-cpp-python alone (it reuses the longest common prefix with the
  *previous* prompt only; its sampler applies the grammar to the whole vocabulary at every token), on the
  bundled Q4_1 GGUF;
- ``after_q4_1``: the engine's defaults now: its prefix cache (the KV cache of the last prompt of each system
  message, restored when the live one holds another) and greedy decoding that tries the grammar on the best token
  first; on the bundled Q4_1, as the engine ran until the default GGUF became its Q8_0;
- ``after``: the same on the default GGUF (``model_file``: the bundled one requantized to Q8_0);
- ``after_fa``: ``after`` with flash attention, which changes answers (``--no-flash-attn``: not run);
- ``--model NAME=PATH``: ``after`` with another GGUF (e.g. the bundled model requantized to Q4_0).
Two scenarios: ``consecutive`` (answers one after the other) and ``other_prompt_between`` (the worker's warm-up
job, another system prompt, runs before each answer, as a model rewrite or a warm-up does).

Per answer: prompt tokens (chat template applied), tokens reused from the KV cache, ``prompt_ms`` (job start to
the first chunk: the chat template, prompt evaluation, the first sample under the grammar), ``first_token_ms``
(job start to the first delta with text), ``first_sentence_ms`` (to the first citation marker's ``]``, the end of
the first sentence, which the output guard holds back until then; the answer's end if none), ``total_ms``;
p50/p95 of each per engine, tokens per second of prompt evaluation and of decoding, and how many answers differ
from ``before``'s (greedy, seed 0). The first question of each scenario warms
the engines up and is not counted. The machine is shared: an answer during which other processes took more than
``--quiet`` cores (/proc/stat less this process's own CPU time) is measured again, up to ``--tries`` times, after
the previous question runs again untimed (so the KV caches hold what they held); the counts say how often.
The host's own speed varies too (by half, hour to hour, invisible to /proc/stat): ``machine`` gives the prompt
evaluation rate from an empty cache at the start and the end, to compare runs by.

Run: ``.venv/bin/python bench/first_token.py --questions 16 --out bench/results/first_token.json`` (about 4
minutes on 2 idle cores, much longer on busy ones).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.corpora import DISFL_QA, emit, percentile  # noqa: E402
from prompts.loader import PromptPassage, load_prompt  # noqa: E402
from retrieval.embedding import build_embedder  # noqa: E402
from serving.answering.llamacpp.engine import LlamaEngine  # noqa: E402
from serving.answering.llamacpp.model_file import bundled_model_path, default_model_path  # noqa: E402
from serving.answering.llamacpp.protocol import Delta, Done, Failed, Job  # noqa: E402
from serving.answering.llamacpp.worker import WARMUP  # noqa: E402
from serving.answering.sentences import compress_passages  # noqa: E402
from serving.contracts.generation import GenerationRequest  # noqa: E402

ENGINES: dict[str, dict[str, bool]] = {
    "before": {"prefix_cache": False, "fast_grammar": False},
    "after_q4_1": {},
    "after": {},
    "after_fa": {"flash_attn": True},
}
ON_THE_BUNDLED_MODEL = {"before", "after_q4_1"}  # Q4_1 as shipped; the others run the default GGUF (Q8_0)


def requests(count: int, sentences: int) -> list[GenerationRequest]:
    prompt = load_prompt("rag_answer", "v2")
    passages = {p["id"]: p["text"] for p in map(json.loads, DISFL_QA.passages.read_text().splitlines())}
    ids = list(passages)
    embedder = build_embedder("onnx", "all-MiniLM-L6-v2", ROOT / ".ragops" / "models", 32) if sentences else None
    made = []
    for number, line in enumerate(DISFL_QA.questions.read_text().splitlines()[:count]):
        question = json.loads(line)
        others = [ids[(number * k + k // 7) % len(ids)] for k in (7, 14, 17)]
        shown = [PromptPassage(i + 1, doc, passages[doc]) for i, doc in enumerate([question["passage_id"], *others])]
        if embedder is not None:
            shown = compress_passages(question["question"], shown, embedder, sentences)
        made.append(GenerationRequest(prompt.render(question["question"], shown), question["question"], shown,
                                      prompt.params))  # fmt: skip
    return made


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds so far: every process's (/proc/stat, all but idle and iowait), and this process's."""
    fields = [int(f) for f in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    own = os.times()
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK"), own.user + own.system


def answer(engine: LlamaEngine, job: Job) -> dict[str, Any]:
    busy, own = cpu_seconds()
    started = time.perf_counter()
    first: float | None = None
    sentence: float | None = None
    done: Done | None = None
    for event in engine.run(job, lambda: False, timeout_s=120.0):
        if isinstance(event, Failed):
            raise RuntimeError(event.message)
        if isinstance(event, Delta) and first is None:
            first = (time.perf_counter() - started) * 1000
        if isinstance(event, Delta) and sentence is None and "]" in event.text:
            sentence = (time.perf_counter() - started) * 1000
        if isinstance(event, Done):
            done = event
    assert done is not None
    wall_s = time.perf_counter() - started
    busy2, own2 = cpu_seconds()
    return {
        "prompt_tokens": engine.prompt_tokens,
        "reused": done.prompt_tokens_reused,
        "evaluated": engine.prompt_tokens - done.prompt_tokens_reused,
        "prompt_ms": done.prompt_ms,
        "first_token_ms": first if first is not None else done.prompt_ms,
        "first_sentence_ms": sentence if sentence is not None else wall_s * 1000,
        "total_ms": wall_s * 1000,
        "completion_tokens": done.completion_tokens,
        "text": done.text,
        "other_cores": max(0.0, (busy2 - busy - (own2 - own)) / wall_s),  # what other processes took meanwhile
    }


def measured(engine: LlamaEngine, job: Job, previous: Job | None, between: bool, quiet: float, tries: int) -> Any:
    """The job's answer, measured again (up to ``tries`` times) while other processes took more than ``quiet``
    cores meanwhile. Untimed before each try: the warm-up job when ``between``; and before a second try, the
    previous question first, so the KV cache and its snapshots hold what they held for the first (not this same
    prompt, which would then be reused whole)."""
    for attempt in range(tries):
        if attempt and previous is not None:
            answer(engine, previous)
        if between:
            answer(engine, WARMUP)
        row = answer(engine, job)
        if row["other_cores"] <= quiet:
            break
    return row | {"tries": attempt + 1}


def machine_speed(engine: LlamaEngine, tokens: int = 115) -> float:
    """Prompt tokens per second from an empty KV cache, the median of 3: this machine's speed (a shared host's
    varies by half from one hour to the next) for comparing runs."""
    llm = engine._llm
    batch = llm.tokenize(DISFL_QA.passages.read_text()[:4000].encode(), add_bos=False)[:tokens]
    rates = []
    for _ in range(3):
        llm.reset()  # type: ignore[no-untyped-call]
        started = time.perf_counter()
        llm.eval(batch)
        rates.append(len(batch) / (time.perf_counter() - started))
    llm.reset()  # type: ignore[no-untyped-call]
    return round(statistics.median(rates), 1)


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(percentile(values, 50), 1), "p95": round(percentile(values, 95), 1),
            "mean": round(statistics.fmean(values), 1)}  # fmt: skip


def scenario(
    engines: dict[str, LlamaEngine], asked: list[GenerationRequest], between: bool, quiet: float, tries: int
) -> dict[str, Any]:
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in engines}
    names = list(engines)
    jobs = [Job.of(number + 1, request) for number, request in enumerate(asked)]
    for number, job in enumerate(jobs):
        previous = jobs[number - 1] if number else None
        for name in names[number % len(names) :] + names[: number % len(names)]:
            row = measured(engines[name], job, previous, between, quiet, tries)
            if number:  # the first answer warms the engine (page cache, allocations, the grammar)
                rows[name].append(row)
    every = [r for kept in rows.values() for r in kept]
    result: dict[str, Any] = {
        "answers": len(asked) - 1,
        "measurements": sum(r["tries"] for r in every),
        "kept_with_other_cores_above_quiet": sum(r["other_cores"] > quiet for r in every),
        "other_cores_p50": round(percentile([r["other_cores"] for r in every], 50), 3),
    }
    for name, kept in rows.items():
        decode_s = sum(r["total_ms"] - r["prompt_ms"] for r in kept) / 1000
        result[name] = {
            "prompt_tokens": summary([r["prompt_tokens"] for r in kept]),
            "reused_tokens": summary([r["reused"] for r in kept]),
            "evaluated_tokens": summary([r["evaluated"] for r in kept]),
            "prompt_ms": summary([r["prompt_ms"] for r in kept]),
            "first_token_ms": summary([r["first_token_ms"] for r in kept]),
            "first_sentence_ms": summary([r["first_sentence_ms"] for r in kept]),
            "total_ms": summary([r["total_ms"] for r in kept]),
            "decode_tokens_per_s": round(sum(r["completion_tokens"] - 1 for r in kept) / decode_s, 1),
            "prompt_eval_tokens_per_s": round(
                sum(r["evaluated"] for r in kept) / (sum(r["prompt_ms"] for r in kept) / 1000), 1
            ),
            "answers_differing_from_before": sum(
                r["text"] != b["text"] for r, b in zip(kept, rows["before"], strict=True)
            ),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=16, help="per scenario; the first one is a warm-up")
    parser.add_argument("--sentences", type=int, default=3, help="context compression (0: whole passages)")
    parser.add_argument("--quiet", type=float, default=0.15, help="measure again while others took more cores")
    parser.add_argument("--tries", type=int, default=8, help="measurements of an answer at most")
    parser.add_argument("--no-flash-attn", action="store_true", help="leave out the after_fa engine")
    parser.add_argument("--model", action="append", default=[], help="NAME=PATH: after, with this GGUF")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    chosen: dict[str, dict[str, Any]] = {
        name: kw for name, kw in ENGINES.items() if not (args.no_flash_attn and kw.get("flash_attn"))
    }
    models = {True: bundled_model_path(), False: default_model_path(ROOT / ".ragops" / "models")}
    engines = {name: LlamaEngine(models[name in ON_THE_BUNDLED_MODEL], **kw) for name, kw in chosen.items()}
    for name in chosen:
        chosen[name] = {**chosen[name], "model": models[name in ON_THE_BUNDLED_MODEL].name}
    for name, path in (spec.split("=", 1) for spec in args.model):
        chosen[name] = {"model": path}
        engines[name] = LlamaEngine(Path(path))
    asked = requests(args.questions, args.sentences)
    started = time.monotonic()
    machine = {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg(),
               "prompt_tokens_per_s_at_start": machine_speed(engines["before"])}  # fmt: skip
    results: dict[str, Any] = {
        "machine": machine,
        "prompt": "rag_answer@v2",
        "passages": f"gold + 3 others, {'cut to ' + str(args.sentences) + ' sentences' if args.sentences else 'whole'}",
        "quiet_cores": args.quiet,
        "engines": chosen,
        "consecutive": scenario(engines, asked, False, args.quiet, args.tries),
        "other_prompt_between": scenario(engines, asked, True, args.quiet, args.tries),
        "seconds": round(time.monotonic() - started),
    }
    machine["prompt_tokens_per_s_at_end"] = machine_speed(engines["before"])
    emit(results, args.out)


if __name__ == "__main__":
    main()
