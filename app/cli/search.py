"""``ragops search``: one query, or a JSONL file of them, against a collection."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from app.cli.common import EXIT_OK, CliError, open_services, read_json_lines, scope_from, settings_from
from retrieval.index import SearchMode

if TYPE_CHECKING:
    from app.cli.common import Commands
    from retrieval.search import SearchResult

SEARCH_MODES = get_args(SearchMode)


def add_parser(commands: Commands) -> None:
    search = commands.add_parser("search", help="search a collection")
    search.add_argument("query", nargs="?", help="the query (or --queries FILE.jsonl)")
    search.add_argument("--queries", type=Path, help='JSONL of {"id", "query"}: one JSON line of hits per query')
    search.add_argument("--collection")
    search.add_argument("--tenant")
    search.add_argument("-k", "--top-k", type=int, dest="top_k", help="number of hits (1-100)")
    search.add_argument("--mode", choices=SEARCH_MODES)
    search.add_argument("--json", action="store_true", help="print hits as JSON")
    search.set_defaults(handler=run_search)


def _read_queries(path: Path) -> list[tuple[str, str]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from exc
    return [
        (str(record.get("id", number)), record["query"])
        for number, record in read_json_lines(lines, str(path), ("query",))
    ]


def _check_args(args: argparse.Namespace) -> None:
    if (args.query is None) == (args.queries is None):
        raise CliError("give a QUERY or --queries FILE.jsonl (not both)")
    if args.query is not None and not args.query.strip():
        raise CliError("the query must not be blank")
    if args.top_k is not None and not 1 <= args.top_k <= 100:
        raise CliError("-k must be between 1 and 100")


def run_search(args: argparse.Namespace) -> int:
    _check_args(args)
    queries = [("query", args.query)] if args.query is not None else _read_queries(args.queries)
    settings = settings_from(args)
    scope = scope_from(args, settings)
    top_k, mode = args.top_k or settings.defaults.top_k, args.mode or settings.defaults.mode
    services = open_services(settings)
    try:
        for query_id, query in queries:
            _print_result(args, query_id, query, services.searcher.search(query, scope, top_k, mode))
    finally:
        services.close()
    return EXIT_OK


def _print_result(args: argparse.Namespace, query_id: str, query: str, result: SearchResult) -> None:
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
