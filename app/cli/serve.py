"""``ragops serve``: the HTTP API under uvicorn."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from app.cli.common import EXIT_OK, CliError, settings_from

if TYPE_CHECKING:
    from app.cli.common import Commands


def add_parser(commands: Commands) -> None:
    serve = commands.add_parser("serve", help="serve the HTTP API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.logs import configure_logging
    from app.main import create_app

    if not 0 < args.port < 65536:
        raise CliError("--port must be between 1 and 65535")
    settings = settings_from(args)
    configure_logging(args.log_level)  # JSON lines with request ids, PII redacted (uvicorn's too)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level, log_config=None)
    return EXIT_OK
