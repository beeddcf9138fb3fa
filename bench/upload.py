"""From a PDF uploaded to a running server to an answer cited from it (issue goal: 10 s or less).

A 20-page PDF is made here (one fact a page, "The <city> office keeps its spare keys in locker <n>.", amid 30
lines of filler that differ on every page, so no chunk's embedding comes from the cache), then a fresh
``ragops serve`` (its own data dir, the shared models dir; timing starts once it is ready) gets it through
``POST /v1/files``. Timed from the upload's start until ``POST /v1/chat``, asked about page 17's fact, answers with
that fact and cites the PDF (asked again every 0.2 s until it does; it does on the first try: the upload returns
once the document is indexed). Run once a generator: ``extractive``, and the default one (``llamacpp``, SmolLM2)
where it is installed.

Run: ``.venv/bin/python bench/upload.py [--out FILE] [--generators extractive llamacpp]`` (about a minute).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.settings import load_settings  # noqa: E402
from bench.corpora import emit  # noqa: E402
from tests.live_server import LiveServer, settings_env  # noqa: E402
from tests.test_loaders import minimal_pdf  # noqa: E402

PAGES = 20
ASKED_PAGE = 17
FILLER_LINES = 30
GOAL_S = 10.0
CITIES = [
    "Lisbon", "Oslo", "Lima", "Osaka", "Dakar", "Quito", "Perth", "Tunis", "Riga", "Cusco",
    "Hanoi", "Accra", "Bergen", "Cairo", "Malmo", "Porto", "Kyoto", "Nairobi", "Tallinn", "Seville",
]  # fmt: skip
WORDS = (
    "staff visitors policy building floor desk badge meeting room schedule request form approval manager team "
    "review report weekly monthly safety training printer network account password holiday travel expense "
    "budget supplier contract invoice delivery parking canteen coffee cleaning heating window door"
).split()
NAME = "office-handbook.pdf"


def locker(page: int) -> int:
    return 100 + page * 7


def handbook() -> bytes:
    """20 pages: filler sentences drawn per page (seeded), with the page's fact in the middle."""
    pages = []
    for page in range(1, PAGES + 1):
        draw = random.Random(page)
        lines = [" ".join(draw.choice(WORDS) for _ in range(12)).capitalize() + "." for _ in range(FILLER_LINES)]
        fact = f"The {CITIES[page - 1]} office keeps its spare keys in locker {locker(page)}."
        lines.insert(FILLER_LINES // 2, fact)
        pages.append("\n".join(lines))
    return minimal_pdf(pages, title="Office handbook")


def run(generator: str, pdf: bytes, models_dir: Path) -> dict[str, Any]:
    city = CITIES[ASKED_PAGE - 1]
    question = f"Where does the {city} office keep its spare keys?"
    expected = f"locker {locker(ASKED_PAGE)}"
    with tempfile.TemporaryDirectory(prefix="ragops-upload-") as scratch:
        env = {
            "RAGOPS_DATA_DIR": str(Path(scratch) / "data"),
            "RAGOPS_MODELS_DIR": str(models_dir),
            **settings_env({"generator": generator, "default_collection": "handbook"}),
        }
        server = LiveServer(env, Path(scratch) / "server.log", timeout=600)
        try:
            with httpx.Client(base_url=server.url, timeout=120) as http:
                started = time.perf_counter()
                uploaded = http.post("/v1/files", files=[("file", (NAME, pdf))], data={"collection": "handbook"})
                upload_s = time.perf_counter() - started
                uploaded.raise_for_status()
                asks = 0
                while True:
                    asks += 1
                    asked = time.perf_counter()
                    answer = http.post("/v1/chat", json={"question": question, "collection": "handbook"}).json()
                    answer_s = time.perf_counter() - asked
                    cited = {c["doc_id"] for c in answer.get("citations", []) if c.get("cited")}
                    if NAME in cited and expected in answer.get("answer", ""):
                        break
                    if time.perf_counter() - started > 120:
                        raise RuntimeError(f"no cited answer after 120 s: {answer}")
                    time.sleep(0.2)
                total_s = time.perf_counter() - started
        finally:
            server.stop()
    report = uploaded.json()
    return {
        "generator": generator,
        "upload_to_cited_answer_s": round(total_s, 2),
        "upload_s": round(upload_s, 2),
        "answer_s": round(answer_s, 2),
        "asks": asks,
        "chunks": report["chunks"],
        "embeddings_computed": report["embeddings_computed"],
        "server_ingest_s": report["seconds"],
        "answer": answer["answer"][:200],
        "goal_met": total_s <= GOAL_S,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--generators", nargs="+", default=["extractive", "llamacpp"])
    args = parser.parse_args()
    pdf = handbook()
    models_dir = load_settings().model_cache_dir  # the main data dir's: the ONNX export is made once
    runs: list[dict[str, Any]] = []
    for generator in args.generators:
        try:
            runs.append(run(generator, pdf, models_dir))
        except RuntimeError as exc:  # the server did not start (no model installed) or never answered
            runs.append({"generator": generator, "error": str(exc)[-500:]})
    emit(
        {
            "pdf": {"pages": PAGES, "bytes": len(pdf), "asked_page": ASKED_PAGE},
            "goal_s": GOAL_S,
            "runs": runs,
            "cpus": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "how": "bench/upload.py: a fresh `ragops serve` (ready before timing), POST /v1/files of the 20-page "
            "PDF, then POST /v1/chat about page 17 until it answers the fact citing the PDF; wall clock from the "
            "upload's start to that answer, one run per generator",
        },
        args.out,
    )


if __name__ == "__main__":
    main()
