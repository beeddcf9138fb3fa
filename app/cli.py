"""The ``ragops`` command line. Errors are one line on stderr with an exit code:
0 ok, 1 runtime failure (``eval gate``: a regression), 2 bad usage or input (``eval gate``: a broken run),
3 partial (some inputs failed, the rest were processed)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError

from app.settings import GeneratorBackend
from prompts.loader import PromptError
from retrieval.index import Scope, SearchMode

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3
SEARCH_MODES = get_args(SearchMode)
GENERATORS = get_args(GeneratorBackend)


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ragops", description="Retrieval-augmented chat service and LLMOps harness.")
    parser.add_argument("--data-dir", type=Path, help="index, caches and logs (default: $RAGOPS_DATA_DIR or ./.ragops)")
    parser.add_argument("--config", type=Path, help="TOML settings file (default: $RAGOPS_CONFIG)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ingest = commands.add_parser("ingest", help="index files: .md .txt .rst .html .pdf .jsonl, or directories")
    ingest.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    ingest.add_argument("--collection", help="collection name (default: settings.default_collection)")
    ingest.add_argument("--tenant", help="tenant (default: settings.default_tenant)")
    ingest.add_argument("--prune", action="store_true", help="remove documents of the collection not seen now")
    ingest.add_argument("--json", action="store_true", help="print the report as JSON")

    search = commands.add_parser("search", help="search a collection")
    search.add_argument("query", nargs="?", help="the query (or --queries FILE.jsonl)")
    search.add_argument("--queries", type=Path, help='JSONL of {"id", "query"}: one JSON line of hits per query')
    search.add_argument("--collection")
    search.add_argument("--tenant")
    search.add_argument("-k", "--top-k", type=int, dest="top_k", help="number of hits (1-100)")
    search.add_argument("--mode", choices=SEARCH_MODES)
    search.add_argument("--json", action="store_true", help="print hits as JSON")

    ask = commands.add_parser("ask", help="answer a question from a collection, with citations")
    ask.add_argument("question")
    ask.add_argument("--collection")
    ask.add_argument("--tenant")
    ask.add_argument("--generator", choices=GENERATORS, help="first generator of the chain")
    ask.add_argument("--prompt", metavar="NAME[@VERSION|@LABEL]", help="prompt to answer with")
    ask.add_argument("--json", action="store_true", help="print the whole answer as JSON")

    prompts = commands.add_parser("prompts", help="prompt versions and labels")
    prompt_commands = prompts.add_subparsers(dest="prompts_command", required=True, metavar="ACTION")
    prompt_commands.add_parser("list", help="prompts, versions and labels").add_argument("--json", action="store_true")
    show = prompt_commands.add_parser("show", help="print a prompt version")
    show.add_argument("ref", metavar="NAME[@VERSION|@LABEL]")
    diff = prompt_commands.add_parser("diff", help="unified diff of two versions or labels")
    diff.add_argument("name")
    diff.add_argument("a")
    diff.add_argument("b")
    promote = prompt_commands.add_parser("promote", help="point a label at a version (releases the version)")
    promote.add_argument("name")
    promote.add_argument("version")
    promote.add_argument("--label", required=True)
    rollback = prompt_commands.add_parser("rollback", help="return a label to its previous version")
    rollback.add_argument("name")
    rollback.add_argument("--label", required=True)

    evals = commands.add_parser("eval", help="run eval suites and gate prompt changes")
    eval_commands = evals.add_subparsers(dest="eval_command", required=True, metavar="ACTION")
    run = eval_commands.add_parser("run", help="run a suite: results.json under --out")
    run.add_argument("suite", type=Path)
    run.add_argument("--prompt", metavar="NAME[@VERSION|@LABEL]", help="default: the suite's prompt")
    run.add_argument("--generator", choices=GENERATORS, help="default: the suite's")
    run.add_argument("--out", type=Path, help="directory for results.json and report.html (default: under DATA_DIR)")
    run.add_argument("--baseline", type=Path, metavar="RESULTS_JSON", help="a run to diff against in the report")
    run.add_argument("--json", action="store_true", help="print the aggregate as JSON")
    run.add_argument("--upload", action="store_true", help="upload the run to LangSmith (needs LANGSMITH_API_KEY)")
    gate = eval_commands.add_parser("gate", help="candidate vs baseline: exit 0 pass, 1 regression, 2 broken")
    gate.add_argument("suite", type=Path)
    gate.add_argument("--baseline", required=True, help="a results.json, or a prompt reference to run")
    gate.add_argument("--candidate", metavar="NAME[@VERSION|@LABEL]", help="default: the suite's prompt")
    gate.add_argument("--generator", choices=GENERATORS, help="default: the suite's")
    gate.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    gate.add_argument("--out", type=Path, help="directory for the candidate's results.json and report.html")

    serve = commands.add_parser("serve", help="serve the HTTP API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])

    guard = commands.add_parser("guard", help="run the guards on texts")
    guard_commands = guard.add_subparsers(dest="guard_command", required=True, metavar="ACTION")
    check = guard_commands.add_parser(
        "check", help='stdin: one JSON line per text, {"text": ..., "guard": "input"|"output", "contexts": [...]}'
    )
    check.add_argument("--json", action="store_true", help="one JSON verdict per line")
    grounded = commands.add_parser(
        "groundedness", help='score answers; stdin: one JSON line each, {"question", "answer", "contexts": [...]}'
    )
    grounded.add_argument("--json", action="store_true", help="one JSON result per line")

    snapshot = commands.add_parser("snapshot", help="write or restore a snapshot of the embedded index")
    snapshot_commands = snapshot.add_subparsers(dest="snapshot_command", required=True, metavar="ACTION")
    snapshot_commands.add_parser("create", help="write the index to FILE (.tar.gz)").add_argument("file", type=Path)
    snapshot_commands.add_parser("restore", help="replace the index with FILE's").add_argument("file", type=Path)
    return parser


def _settings(args: argparse.Namespace, **overrides: Any) -> Any:
    from app.settings import load_settings

    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    try:
        return load_settings(args.config, **overrides)
    except FileNotFoundError as exc:
        raise CliError(str(exc)) from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        raise CliError(f"invalid setting {'.'.join(map(str, first['loc']))}: {first['msg']}") from exc


def _services(settings: Any) -> Any:
    from app.container import build_services
    from retrieval.index import IndexUnavailableError

    try:
        return build_services(settings)
    except IndexUnavailableError as exc:
        raise CliError(str(exc), EXIT_FAILURE) from exc


def _scope(args: argparse.Namespace, settings: Any) -> Scope:
    """The (collection, tenant) of ``--collection`` and ``--tenant``, or the settings' defaults."""
    import re

    names = []
    for what, value, default in (
        ("collection", args.collection, settings.default_collection),
        ("tenant", args.tenant, settings.default_tenant),
    ):
        name = value or default
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            raise CliError(f"{what} must be 1-64 letters, digits, '.', '_' or '-': {name!r}")
        names.append(name)
    return Scope(*names)


def _ingest(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    settings = _settings(args)
    scope = _scope(args, settings)
    services = _services(settings)
    try:

        def progress(total: int) -> Any:
            return tqdm(total=total, unit="chunk", desc="indexing", disable=True if args.json else None)

        report = services.ingestor.ingest_paths(args.paths, scope, prune=args.prune, progress=progress)
    finally:
        services.close()
    if args.json:
        print(json.dumps({"collection": scope.collection, "tenant": scope.tenant, **report.to_dict()}))
    else:
        for error in report.errors:
            print(f"skipped {error['source']}: {error['error']}", file=sys.stderr)
        print(report.summary())
    return EXIT_PARTIAL if report.errors else EXIT_OK


def _json_lines(lines: Iterable[str], where: str, required: tuple[str, ...]) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; ``required`` keys must hold non-blank strings. A bad line
    stops the command with its number (exit 2), before anything ran."""
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CliError(f"{where}:{number}: invalid JSON ({exc.msg})") from exc
        if not isinstance(record, dict) or any(
            not isinstance(record.get(k), str) or not record[k].strip() for k in required
        ):
            raise CliError(f"{where}:{number}: expected an object with non-empty string {', '.join(required)}")
        contexts = record.get("contexts", [])
        if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
            raise CliError(f"{where}:{number}: 'contexts' must be a list of strings")
        records.append((number, record))
    return records


def _read_queries(path: Path) -> list[tuple[str, str]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from exc
    return [
        (str(record.get("id", number)), record["query"]) for number, record in _json_lines(lines, str(path), ("query",))
    ]


def _search(args: argparse.Namespace) -> int:
    if (args.query is None) == (args.queries is None):
        raise CliError("give a QUERY or --queries FILE.jsonl (not both)")
    if args.query is not None and not args.query.strip():
        raise CliError("the query must not be blank")
    if args.top_k is not None and not 1 <= args.top_k <= 100:
        raise CliError("-k must be between 1 and 100")
    queries = [("query", args.query)] if args.query is not None else _read_queries(args.queries)
    settings = _settings(args)
    scope = _scope(args, settings)
    top_k, mode = args.top_k or settings.default_top_k, args.mode or settings.default_mode
    services = _services(settings)
    try:
        for query_id, query in queries:
            result = services.searcher.search(query, scope, top_k, mode)
            hits = [hit.to_dict() for hit in result.hits]
            if args.queries is not None:
                print(json.dumps({"id": query_id, "query": query, "hits": hits}, ensure_ascii=False))
            elif args.json:
                print(json.dumps({"hits": hits, "timings_ms": result.timings_ms}, ensure_ascii=False))
            else:
                for rank, hit in enumerate(result.hits, 1):
                    snippet = " ".join(hit.text.split())[:160]
                    print(f"{rank}. [{hit.score:.4f}] {hit.doc_id}#{hit.chunk_index}  {snippet}")
                if not result.hits:
                    print("no hits")
    finally:
        services.close()
    return EXIT_OK


def _ask(args: argparse.Namespace) -> int:
    from serving.pipeline import AnswerRequest

    if not args.question.strip():
        raise CliError("the question must not be blank")
    overrides = {key: value for key in ("generator", "prompt") if (value := getattr(args, key))}
    settings = _settings(args, **overrides)
    scope = _scope(args, settings)
    services = _services(settings)
    try:
        answer = services.pipeline.answer(AnswerRequest(args.question.strip(), scope, settings.chat_top_k))
    except PromptError as exc:
        raise CliError(str(exc)) from exc
    finally:
        services.close()
    if args.json:
        print(json.dumps(answer.to_dict(), ensure_ascii=False))
        return EXIT_OK
    print(answer.answer)
    for citation in answer.citations:
        if citation.cited:
            print(f"  [{citation.index}] {citation.title or citation.doc_id} ({citation.doc_id})")
    note = f"generator: {answer.generator}"
    if answer.fallback:
        note += f" (fallback from {answer.fallback['from']}: {answer.fallback['reason']})"
    print(note, file=sys.stderr)
    return EXIT_OK


def _prompts(args: argparse.Namespace) -> int:
    from prompts.registry import PromptRegistry

    settings = _settings(args)
    registry = PromptRegistry(settings.prompts_dir) if settings.prompts_dir else PromptRegistry()
    try:
        if args.prompts_command == "list":
            listing: list[dict[str, Any]] = [
                {
                    "name": name,
                    "versions": registry.versions(name),
                    "labels": registry.labels(name),
                    "released": sorted(registry.released(name)),
                }
                for name in registry.names()
            ]
            if args.json:
                print(json.dumps(listing))
            else:
                for item in listing:
                    labels = ", ".join(f"{label}={version}" for label, version in sorted(item["labels"].items()))
                    print(f"{item['name']}: versions {' '.join(item['versions'])}; labels {labels or '(none)'}")
        elif args.prompts_command == "show":
            prompt = registry.resolve(args.ref)
            assert prompt.path is not None
            print(f"# {prompt.ref} (hash {prompt.content_hash})")
            print(prompt.path.read_text(), end="")
        elif args.prompts_command == "diff":
            print(registry.diff(args.name, args.a, args.b), end="")
        elif args.prompts_command == "promote":
            prompt = registry.promote(args.name, args.version, args.label)
            print(f"{args.name}@{args.label} -> {prompt.version} (hash {prompt.content_hash})")
        else:
            print(f"{args.name}@{args.label} -> {registry.rollback(args.name, args.label)}")
    except PromptError as exc:
        raise CliError(str(exc)) from exc
    return EXIT_OK


def _eval_run(args: argparse.Namespace, suite: Any, prompt: str | None) -> dict[str, Any]:
    """Run ``suite`` with ``prompt`` (default: the suite's), its own services, closed afterwards."""
    from tqdm import tqdm

    from evals.runner import run_suite

    settings = _settings(
        args,
        prompt=prompt or suite.prompt,
        generator=args.generator or suite.generator,
        canary_prompt=None,
        output_guard="report",  # score the model's own answers; groundedness is a metric here
        tracing=False,  # --upload sends the run as an experiment instead
    )
    services = _services(settings)
    try:
        results, stats = run_suite(suite, services, lambda total: tqdm(total=total, unit="sample", desc=suite.name))
    finally:
        services.close()
    print(
        f"{suite.name}: {stats.samples} samples ({stats.cached} from cache) in {stats.seconds:.1f}s "
        f"with {results['prompt']['ref']} on {results['generator']}",
        file=sys.stderr,
    )
    return results


def _read_results(path: Path) -> dict[str, Any]:
    try:
        results: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise CliError(f"{path} is not a results.json: {exc}") from exc
    if not isinstance(results, dict) or not {"samples", "aggregate", "prompt"} <= set(results):
        raise CliError(f"{path} is not a results.json (no samples, aggregate or prompt)")
    return results


def _write_run(out: Path, results: dict[str, Any], baseline: dict[str, Any] | None) -> Path:
    from evals.report import write_report

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    return write_report(out / "report.html", results, baseline)


def _eval(args: argparse.Namespace) -> int:
    from evals.gate import REGRESSION, compare, verdict_table
    from evals.suite import SuiteError, load_suite

    try:
        suite = load_suite(args.suite)
        if args.eval_command == "run":
            baseline = _read_results(args.baseline) if args.baseline else None
            if args.upload and not os.environ.get("LANGSMITH_API_KEY"):
                raise CliError("--upload needs LANGSMITH_API_KEY (and LANGSMITH_ENDPOINT for a self-hosted LangSmith)")
            results = _eval_run(args, suite, args.prompt)
            out = args.out or _settings(args).data_dir / "evals" / (
                f"{suite.name}-{results['prompt']['version']}-{results['generator']}"
            )
            report = _write_run(out, results, baseline)
            uploaded = _upload(results) if args.upload else None
            if args.json:
                print(json.dumps({"results": str(out / "results.json"), "report": str(report),
                                  "langsmith": uploaded, "aggregate": results["aggregate"]}))  # fmt: skip
            else:
                for metric, summary in results["aggregate"].items():
                    print(
                        f"{metric}: {summary['mean']} (n={summary['n']}, not applicable={summary['not_applicable']}, "
                        f"failed={summary['failed']})"
                    )
                print(f"results: {out / 'results.json'}\nreport: {report}")
                if uploaded:
                    print(f"langsmith: experiment {uploaded['experiment']}")
            return EXIT_OK
        if (args.generator or suite.generator) == "extractive":
            raise CliError("the gate judges prompts through a model; the extractive generator ignores prompts")
        baseline_path = Path(args.baseline)
        baseline = _read_results(baseline_path) if baseline_path.is_file() else _eval_run(args, suite, args.baseline)
        candidate = _eval_run(args, suite, args.candidate)
    except (SuiteError, PromptError) as exc:
        raise CliError(f"broken eval run: {exc}") from exc
    if candidate["dataset"]["hash"] != baseline.get("dataset", {}).get("hash"):
        raise CliError("broken eval run: the baseline was run on another dataset (dataset hashes differ)")
    if candidate["generator"] != baseline.get("generator"):
        raise CliError(
            f"broken eval run: the baseline was run on {baseline.get('generator')}, not {candidate['generator']}"
        )
    verdicts = compare(baseline, candidate, suite, seed=args.seed)
    print(verdict_table(verdicts, baseline["prompt"]["ref"], candidate["prompt"]["ref"]))
    if args.out:
        print(f"report: {_write_run(args.out, candidate, baseline)}", file=sys.stderr)
    return EXIT_FAILURE if any(v.verdict == REGRESSION for v in verdicts) else EXIT_OK


def _upload(results: dict[str, Any]) -> dict[str, str]:
    from evals.langsmith_upload import upload_experiment

    try:
        return upload_experiment(results)
    except Exception as exc:  # the run is saved; an upload that fails says so and the command fails
        raise CliError(f"LangSmith upload failed (results are saved locally): {type(exc).__name__}: {exc}") from exc


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.logs import configure_logging
    from app.main import create_app

    if not 0 < args.port < 65536:
        raise CliError("--port must be between 1 and 65535")
    settings = _settings(args)
    configure_logging(args.log_level)  # JSON lines with request ids, PII redacted (uvicorn's too)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level, log_config=None)
    return EXIT_OK


def _snapshot(args: argparse.Namespace) -> int:
    from retrieval.index import IndexUnavailableError, SnapshotIndex

    services = _services(_settings(args))
    try:
        index = services.index
        if not isinstance(index, SnapshotIndex):
            raise CliError("snapshots cover the embedded index; use Qdrant's own snapshots for a server")
        if args.snapshot_command == "create":
            print(index.snapshot(args.file))
        else:
            index.restore(args.file)
            print(f"restored {args.file}: {index.count()} points")
    except IndexUnavailableError as exc:
        raise CliError(str(exc), EXIT_FAILURE) from exc
    finally:
        services.close()
    return EXIT_OK


def _guard(args: argparse.Namespace) -> int:
    from app.container import build_cached_embedder, build_guards
    from safety.guards import PolicyError

    numbered = _json_lines(sys.stdin, "stdin", ("text",))
    for number, record in numbered:
        if record.get("guard", "input") not in ("input", "output"):
            raise CliError(f"stdin:{number}: 'guard' must be input or output")
    records = [record for _, record in numbered]
    settings = _settings(args, guards=True)
    embedder = build_cached_embedder(settings)
    try:
        guards = build_guards(settings, embedder)
    except PolicyError as exc:
        embedder.store.close()
        raise CliError(f"bad guard policy: {exc}") from exc
    assert guards is not None and guards.input is not None and guards.output is not None
    blocked = False
    try:
        for record in records:
            guard = guards.output if record.get("guard") == "output" else guards.input
            contexts = record.get("contexts", [])
            verdict = guard.check(record["text"], {"contexts": contexts, "passages": len(contexts)})
            blocked = blocked or not verdict.passed
            if args.json:
                print(json.dumps({"guard": guard.name, "text": verdict.text, **verdict.to_dict()}))
            else:
                fired = ", ".join(f"{f.validator} ({f.action})" for f in verdict.fired) or "-"
                print(f"{verdict.action}\t{fired}\t{verdict.text}")
    finally:
        embedder.store.close()
    return EXIT_FAILURE if blocked else EXIT_OK


def _groundedness(args: argparse.Namespace) -> int:
    from app.container import build_cached_embedder
    from safety.groundedness import GroundednessScorer

    records = [record for _, record in _json_lines(sys.stdin, "stdin", ("question", "answer"))]
    settings = _settings(args)
    embedder = build_cached_embedder(settings)
    scorer = GroundednessScorer(embedder.embed, settings.groundedness_threshold)
    try:
        for record in records:
            result = scorer.score(record["answer"], record.get("contexts", []))
            supported = result.score is None or result.score >= scorer.threshold
            if args.json:
                print(json.dumps({**result.to_dict(), "supported": supported}))
            else:
                score = "n/a" if result.score is None else f"{result.score:.3f}"
                print(f"{score}\t{'supported' if supported else 'UNSUPPORTED'}\t{' | '.join(result.unsupported)}")
    finally:
        embedder.store.close()
    return EXIT_OK


_COMMANDS = {
    "ingest": _ingest,
    "search": _search,
    "ask": _ask,
    "prompts": _prompts,
    "eval": _eval,
    "guard": _guard,
    "groundedness": _groundedness,
    "serve": _serve,
    "snapshot": _snapshot,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except CliError as exc:
        print(f"ragops: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("ragops: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
