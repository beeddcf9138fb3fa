"""Builds the small user-like corpora (issue 25): six made-up corpora of two to four documents each, in markdown,
HTML and PDF (``evals/corpora/small/<corpus>/``), their questions (``evals/datasets/small_corpora*.jsonl``) and the
two suites (``small_corpora``: vantrel, bakery, cycling, what abstention was tuned on; ``small_corpora_heldout``:
handbook, museum, garden). The documents and questions are ``bench/small_corpora_text.py``.

Each corpus goes into its own collection (the suites' ``collection_per_corpus``), as a user's handful of documents
would: a sample's id starts with its corpus' folder name. Answerable questions carry gold answers and reference
files; unanswerable ones ask, in the corpus' own domain, what no document says, and expect an abstention. So both
misses are cases: a false abstention (an answerable question abstained) and a false answer.

Deterministic: no randomness, no model, no PDF library (the PDF is written by hand with a correct xref table, in
ASCII, so it is also a text file), so a re-run writes byte-identical files.

Run: ``.venv/bin/python -m bench.build_small_corpora`` (``--check`` fails when the committed files differ);
``--figures RESULTS.json`` prints a run's figures: both abstention error rates, citation accuracy and the answers
given without a groundedness score.
"""

from __future__ import annotations

import argparse
import html
import json
import textwrap
from pathlib import Path

from bench.corpora import write_or_check
from bench.small_corpora_text import HELD_OUT, TUNING, Corpus

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "evals" / "corpora" / "small"
DATASETS, SUITES = ROOT / "evals" / "datasets", ROOT / "evals" / "suites"


def markdown(title: str, sections: tuple[tuple[str, str], ...]) -> str:
    return f"# {title}\n" + "".join(f"\n## {heading}\n\n{text}\n" for heading, text in sections)


def html_page(title: str, sections: tuple[tuple[str, str], ...]) -> str:
    body = "".join(f"<h2>{html.escape(h)}</h2>\n<p>{html.escape(t)}</p>\n" for h, t in sections)
    return f"<!doctype html>\n<html><head><title>{html.escape(title)}</title></head>\n<body>\n<h1>" \
           f"{html.escape(title)}</h1>\n{body}</body></html>\n"  # fmt: skip


def pdf(title: str, sections: tuple[tuple[str, str], ...]) -> str:
    """One page of Helvetica text, a line each 80 characters at most; ASCII only, so byte offsets are characters."""
    lines = [title, ""]
    for heading, text in sections:
        lines += [heading, *textwrap.wrap(text, 80), ""]
    escaped = (line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") for line in lines)
    content = "BT /F1 11 Tf 14 TL 60 750 Td " + " T* ".join(f"({line}) Tj" for line in escaped) + " ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(content)} >>\nstream\n{content}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        f"<< /Title ({title}) >>",
    ]
    out, offsets = "%PDF-1.4\n", []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n" + "".join(f"{o:010d} 00000 n \n" for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Info {len(objects)} 0 R >>\nstartxref\n{xref}\n%%EOF\n"
    assert out.isascii(), title
    return out


WRITERS = {".md": markdown, ".html": html_page, ".pdf": pdf}


def dataset(corpora: tuple[Corpus, ...]) -> str:
    rows = []
    for name, _, questions in corpora:
        for suffix, question, answers, references in questions:
            expected = "answer" if answers else "abstain"
            rows.append({"id": f"{name}/{suffix}", "question": question, "answers": list(answers),
                         "reference_doc_ids": list(references), "expected": expected})  # fmt: skip
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def suite(name: str, corpora: tuple[Corpus, ...], what: str) -> str:
    folders = "".join(f"  - evals/corpora/small/{corpus}\n" for corpus, _, _ in corpora)
    return (
        f"# Written by bench/build_small_corpora.py: edit that script, not this file.\nname: {name}\n"
        "description: >-\n"
        + textwrap.indent(
            textwrap.fill(
                f"{what} Each corpus is its own collection (a user's handful of markdown, HTML and PDF documents); "
                "answerable questions and in-domain questions no document answers, so a false abstention and a false "
                "answer both count (abstained_when_expected).",
                110,
            ),
            "  ",
        )
        + "\n"
        f"dataset: evals/datasets/{name}.jsonl\ncorpus:\n{folders}collection: eval-{name.replace('_', '-')}\n"
        "collection_per_corpus: true\nprompt: rag_answer@production\ngenerator: extractive\nmetrics:\n"
        "  abstained_when_expected: {threshold: 0.8, tolerance: 0.05}\n"
        "  citation_accuracy: {tolerance: 0.05}\n  contains_answer: {tolerance: 0.05}\n"
        "  groundedness: {tolerance: 0.05}\n"
    )


def built() -> dict[Path, str]:
    files: dict[Path, str] = {}
    for corpora in (TUNING, HELD_OUT):
        for name, documents, _ in corpora:
            for file_name, title, sections in documents:
                files[SMALL / name / file_name] = WRITERS[Path(file_name).suffix](title, sections)
    files[DATASETS / "small_corpora.jsonl"] = dataset(TUNING)
    files[DATASETS / "small_corpora_heldout.jsonl"] = dataset(HELD_OUT)
    files[SUITES / "small_corpora.yaml"] = suite("small_corpora", TUNING, "Vantrel Glassworks, a bakery and a "
                                                 "cycling club, what abstention was tuned on.")  # fmt: skip
    files[SUITES / "small_corpora_heldout.yaml"] = suite(
        "small_corpora_heldout", HELD_OUT, "A team handbook, a clock museum and a community garden, held out."
    )
    return files


def figures(results: Path) -> str:
    """A results file's abstention errors (each a share of its kind of question), citation accuracy over the
    answered ones, and how many answers came without a groundedness score."""
    samples = json.loads(results.read_text(encoding="utf-8"))["samples"]
    answerable = [s for s in samples if s["expected"] == "answer"]
    unanswerable = [s for s in samples if s["expected"] == "abstain"]
    false_abstain = sum(s["abstained"] for s in answerable)
    false_answer = sum(not s["abstained"] for s in unanswerable)
    cited = [v for s in answerable if (v := s["metrics"].get("citation_accuracy")) is not None]
    answered = [s for s in samples if s["outcome"] == "answered"]
    unscored = sum("groundedness" in s["metrics"] and s["metrics"]["groundedness"] is None for s in answered)
    contains = [v for s in answerable if (v := s["metrics"].get("contains_answer")) is not None]
    return (
        f"false abstention {false_abstain}/{len(answerable)}, false answer {false_answer}/{len(unanswerable)}, "
        f"citation accuracy {sum(cited) / max(len(cited), 1):.2f} (n={len(cited)}), contains answer "
        f"{sum(contains) / max(len(contains), 1):.2f}, answered without a groundedness score {unscored}/{len(answered)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a committed file differs")
    parser.add_argument("--figures", type=Path, metavar="RESULTS", help="print a results file's figures")
    args = parser.parse_args()
    if args.figures:
        print(figures(args.figures))
        return
    files = built()
    if not args.check:
        for path in files:
            path.parent.mkdir(parents=True, exist_ok=True)
    write_or_check(files, "python -m bench.build_small_corpora", args.check)


if __name__ == "__main__":
    main()
