"""``ragops ask``: answer a question from a collection, with citations. The one place the CLI reads an
``Answer``."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from app.cli.common import EXIT_OK, GENERATORS, CliError, open_services, scope_from, settings_from
from prompts.loader import PromptError

if TYPE_CHECKING:
    from app.cli.common import Commands
    from serving.answering.pipeline import Answer


def add_parser(commands: Commands) -> None:
    ask = commands.add_parser("ask", help="answer a question from a collection, with citations")
    ask.add_argument("question")
    ask.add_argument("--collection")
    ask.add_argument("--tenant")
    ask.add_argument("--generator", choices=GENERATORS, help="first generator of the chain")
    ask.add_argument("--prompt", metavar="NAME[@VERSION|@LABEL]", help="prompt to answer with")
    ask.add_argument("--json", action="store_true", help="print the whole answer as JSON")
    ask.set_defaults(handler=run_ask)


def run_ask(args: argparse.Namespace) -> int:
    from serving.contracts.answer import AnswerRequest

    if not args.question.strip():
        raise CliError("the question must not be blank")
    overrides = {key: value for key in ("generator", "prompt") if (value := getattr(args, key))}
    settings = settings_from(args, **overrides)
    scope = scope_from(args, settings)
    services = open_services(settings)
    try:
        answer = services.pipeline.answer(
            AnswerRequest(question=args.question.strip(), scope=scope, top_k=settings.answering.chat_top_k)
        )
    except PromptError as exc:
        raise CliError(str(exc)) from exc
    finally:
        services.close()
    if args.json:
        print(answer.model_dump_json())
    else:
        _print_answer(answer)
    return EXIT_OK


def _print_answer(answer: Answer) -> None:
    """The answer and its cited passages on stdout; which generator answered (and any fallback) on stderr."""
    print(answer.answer)
    for citation in answer.citations:
        if citation.cited:
            print(f"  [{citation.index}] {citation.title or citation.doc_id} ({citation.doc_id})")
    note = f"generator: {answer.generator or 'none'} ({answer.outcome})"
    if answer.fallback:
        note += f" (fallback from {answer.fallback.from_}: {answer.fallback.reason})"
    print(note, file=sys.stderr)
