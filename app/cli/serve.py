"""``ragops serve``: the HTTP API under uvicorn.

Safe by default: without API keys anyone who reaches the port reads and writes every tenant's documents, so a
non-loopback address needs ``RAGOPS_ALLOW_OPEN=true`` to say that is meant. The services (index, models) are
built before uvicorn starts, so an index that cannot open is one line and exit 1, not a traceback from inside
uvicorn's startup. Shutdown is graceful (``app.cli.graceful``): SIGTERM turns ``/readyz`` to 503, open requests and
streams finish within ``shutdown_grace_s``, and the process exits 0.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
from typing import TYPE_CHECKING

from app.cli.common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CliError, open_services, open_state, settings_from

if TYPE_CHECKING:
    from app.cli.common import Commands
    from app.container import Services
    from app.settings import Settings


def add_parser(commands: Commands) -> None:
    serve = commands.add_parser("serve", help="serve the HTTP API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.cli.graceful import GracefulServer
    from app.logs import SERVER_LOGGER, configure_logging
    from app.main import create_app

    if not 0 < args.port < 65536:
        raise CliError("--port must be between 1 and 65535")
    settings = settings_from(args)
    has_keys = bool(settings.api_keys) or store_has_keys(settings)  # opens no model, creates no file
    check_exposure(args.host, settings, has_keys)
    configure_logging(args.log_level)  # JSON lines with request ids, PII redacted (uvicorn's too)
    if not is_loopback(args.host) and not has_keys:
        logging.getLogger(SERVER_LOGGER).warning(
            "serving %s without API keys (RAGOPS_ALLOW_OPEN=true): anyone who reaches it reads and writes", args.host
        )
    services = open_services(settings)  # an index that cannot open: its one line, exit 1
    try:
        open_governance(services)
        _ = services.pipeline  # load the generator now, not on the first question
        _ = services.retention  # prune kept answers past retention now and daily
        app = create_app(settings, services=services)
        # Our middleware logs one line per request, path without the query string; uvicorn's would log both.
        # proxy_headers off: uvicorn would otherwise take X-Forwarded-For from any loopback peer as the client;
        # app.api.deps.client_address is the one rule (trusted_proxies).
        config = uvicorn.Config(
            app, host=args.host, port=args.port, log_level=args.log_level, log_config=None, access_log=False,
            proxy_headers=False, timeout_graceful_shutdown=settings.shutdown_grace_s,
        )  # fmt: skip
        GracefulServer(config, app.state, settings.shutdown_drain_s).run()
    finally:
        services.close()
    return EXIT_OK


def store_has_keys(settings: Settings) -> bool:
    """Whether a key was ever made in the state store. A SQLite store that does not exist yet holds none (and is
    not created here: a refused ``serve`` leaves the data dir as it found it)."""
    from serving.keys import KeyStore

    if settings.database_url is None and not settings.state_path.exists():
        return False
    with open_state(settings) as store:
        return KeyStore(store).any_made()


def open_governance(services: Services) -> None:
    """The state store, the access gate and the audit writer, opened before the first request: a database
    that cannot be reached is one line and exit 1."""
    from serving.state_store import StateStoreError

    try:
        _ = services.audit
        _ = services.gate.keys.has_keys()
    except StateStoreError as exc:
        raise CliError(str(exc), EXIT_FAILURE) from exc


def check_exposure(host: str, settings: Settings, has_keys: bool) -> None:
    """Refuse a non-loopback address without API keys unless ``allow_open`` says it is meant."""
    if has_keys or settings.allow_open or is_loopback(host):
        return
    raise CliError(
        f"refusing to serve on {host} without API keys: anyone who reaches it could read and write every "
        "tenant's documents. Set RAGOPS_API_KEYS or create a key (ragops keys create), or listen on 127.0.0.1 "
        "(the default), or set RAGOPS_ALLOW_OPEN=true if an open service is meant",
        EXIT_USAGE,
    )


def is_loopback(host: str) -> bool:
    """Only this machine can connect: ``localhost`` or a loopback address. A host name may resolve to anything,
    so it counts as open."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
