"""Server CPU per request, one request at a time, right after an ingest: what each kind of request costs the
process (user + system seconds of the ``ragops serve`` process, psutil), apart from any queueing.

A real ``ragops serve`` (extractive, guards and audit on, an editor key) ingests 220 new_wiki passages through
``POST /v1/documents`` (``bench/load_operator.py``'s first slice), then answers, in order: the first chat in the
new collection, 40 repeats of it (cache hits), 40 searches, the same 40 again (their question vectors cached),
30 new chats. Prints CPU and wall ms per request of each kind.

Run: ``.venv/bin/python bench/request_cpu.py [--out FILE]`` (about a minute).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import load_operator  # noqa: E402
from bench.corpora import emit  # noqa: E402
from bench.load_steps import base_env, cpu_seconds  # noqa: E402

COLLECTION = "wiki0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ragops-bench-cpu-") as tmp:
        target = load_operator.ragops_target(Path(tmp), base_env(ROOT / ".ragops" / "models"))
        try:
            piece = load_operator.slices(1)[0]
            figures["ingest_s"] = round(target.ingest(piece, COLLECTION), 1)
            process = psutil.Process(target.server.process.pid)
            headers = {"Authorization": f"Bearer {target.api_key}"}
            with httpx.Client(base_url=target.server.url, timeout=60, headers=headers) as client:
                question = piece.repeated[0]
                chat = ("/v1/chat", {"question": question, "collection": COLLECTION})
                searches = [("/v1/search", {"query": q, "collection": COLLECTION}) for q in piece.searches[:40]]
                steps = {
                    "first_chat": [chat],
                    "cached_chat": [chat] * 40,
                    "search": searches,
                    "search_vector_cached": searches,
                    "new_chat": [("/v1/chat", {"question": q, "collection": COLLECTION}) for q in piece.unique[:30]],
                }
                for name, requests in steps.items():
                    figures[name] = cost(client, process, requests)
        finally:
            target.server.stop()
    emit(figures, args.out)


def cost(client: httpx.Client, process: psutil.Process, requests: list[tuple[str, dict[str, Any]]]) -> dict[str, float]:
    """CPU and wall milliseconds per request, the requests sent one after the other."""
    cpu_before, wall_before = cpu_seconds([process]), time.perf_counter()
    for path, body in requests:
        client.post(path, json=body).raise_for_status()
    n = len(requests)
    return {"cpu_ms": round(1000 * (cpu_seconds([process]) - cpu_before) / n, 1),
            "wall_ms": round(1000 * (time.perf_counter() - wall_before) / n, 1)}  # fmt: skip


if __name__ == "__main__":
    main()
