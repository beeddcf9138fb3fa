"""``ragops serve``: the HTTP API under uvicorn.

Safe by default: without API keys anyone who reaches the port reads and writes every tenant's documents, so a
non-loopback address needs ``RAGOPS_ALLOW_OPEN=true`` to say that is meant. The services (index, models) are
built before uvicorn starts, so an index that cannot open is one line and exit 1, not a traceback from inside
uvicorn's startup. ``ragops doctor --quick`` runs first, in a child process beside the start-up (a check that
crashes natively cannot take ``serve`` with it), and what it finds wrong goes to the log with what to do. The
llama.cpp generator runs in a worker process of its own (``serving.answering.llamacpp``). Shutdown is graceful
(``app.cli.graceful``): SIGTERM turns ``/readyz`` to 503, open requests and streams finish within
``shutdown_grace_s``, and the process exits 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import subprocess
import sys
from typing import TYPE_CHECKING

from app.api.hosts import is_loopback
from app.cli.common import API_KEY_ENV, EXIT_FAILURE, EXIT_OK, CliError, open_services, settings_from
from app.cli.doctor import Check
from app.cli.exposure import check_exposure, store_has_keys
from app.logs import SERVER_LOGGER
from app.startup import start_step

PREFLIGHT_TIMEOUT_S = 60.0

if TYPE_CHECKING:
    from app.cli.common import Commands
    from app.container import Services


def add_parser(commands: Commands) -> None:
    serve = commands.add_parser("serve", help="serve the HTTP API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.cli.graceful import GracefulServer
    from app.logs import configure_logging
    from app.main import create_app
    from serving.observe.gc_pauses import CollectorPauses, freeze_startup_heap

    if not 0 < args.port < 65536:
        raise CliError("--port must be between 1 and 65535")
    preflight = start_preflight(args)
    settings = settings_from(args)
    has_keys = bool(settings.access.api_keys) or store_has_keys(settings)  # opens no model, creates no file
    check_exposure(args.host, settings, has_keys)
    configure_logging(args.log_level)  # JSON lines with request ids, PII redacted (uvicorn's too)
    if not is_loopback(args.host) and not has_keys:
        logging.getLogger(SERVER_LOGGER).warning(
            "serving %s without API keys (RAGOPS_ALLOW_OPEN=true): anyone who reaches it reads and writes", args.host
        )
    services = open_services(settings)  # an index that cannot open: its one line, exit 1
    pauses = CollectorPauses(services.metrics.gc_pauses)
    try:
        with start_step("opening the state store and the audit trail"):
            open_governance(services)
        with start_step(f"loading the generator ({settings.generator})"):
            _ = services.pipeline  # now, not on the first question
        with start_step("waiting for ragops doctor's checks"):
            report_preflight(preflight)
        with start_step("applying retention (then daily)"):
            _ = services.retention
        from app.parts import finish_erasures  # heavy: not at import, `ragops --help` stays fast

        with start_step("finishing interrupted erasures"):
            finish_erasures(services.eraser)
        with start_step("freezing the start-up heap"):  # out of every full collection's pass (gc_pauses)
            freeze_startup_heap()
        pauses.start()
        app = create_app(settings, services=services, bind_host=args.host)
        # Our middleware logs one line per request, path without the query string; uvicorn's would log both.
        # proxy_headers off: uvicorn would otherwise take X-Forwarded-For from any loopback peer as the client;
        # app.api.deps.client_address is the one rule (trusted_proxies).
        config = uvicorn.Config(
            app, host=args.host, port=args.port, log_level=args.log_level, log_config=None, access_log=False,
            proxy_headers=False, timeout_graceful_shutdown=settings.shutdown.grace_s,
        )  # fmt: skip
        url = f"http://{'localhost' if is_loopback(args.host) else args.host}:{args.port}"
        GracefulServer(
            config, app.state, settings.shutdown.drain_s, on_ready=lambda: announce_ready(services, url, has_keys)
        ).run()
    finally:
        pauses.close()
        services.close()
    return EXIT_OK


# The README's first question: the sample corpus answers it.
SAMPLE_COLLECTION, SAMPLE_QUESTION = "sample", "What part of the Earth's atmosphere is oxygen?"


def announce_ready(services: Services, url: str, needs_key: bool) -> None:
    """In the log, and as a plain line on stdout (the log's JSON escapes the quotes a reader would copy)."""
    message = ready_message(services, url, needs_key)
    logging.getLogger(SERVER_LOGGER).info(message)
    print(message, flush=True)


def ready_message(services: Services, url: str, needs_key: bool) -> str:
    """The line that says the start is over: where the page is and a first question to ask, in the collection
    that a client naming none would be answered from (``app.api.deps.answered_scope``'s rule), or how to add
    documents when there are none."""
    defaults = services.settings.defaults
    filled = services.index.collections(defaults.tenant)
    if not filled:
        return (
            f"ready: open {url}/ - no documents yet: upload files there (an editor key, when keys are on) "
            f"or run `ragops ingest --url {url} PATH`"
        )
    collection = defaults.collection if defaults.collection in filled else filled[0]
    question = SAMPLE_QUESTION if collection == SAMPLE_COLLECTION else "What are these documents about?"
    body = shlex.quote(json.dumps({"question": question, "collection": collection}))
    key = f' -H "authorization: Bearer ${API_KEY_ENV}"' if needs_key else ""  # the variable, never a key
    return (
        f"ready: open {url}/ and ask, or try: curl -s {url}/v1/chat{key} -H 'content-type: application/json' -d {body}"
    )


def start_preflight(args: argparse.Namespace) -> subprocess.Popen[str]:
    """``ragops doctor --quick --json`` for this host and port, with this command's settings, started now."""
    options = [
        f"--{name.replace('_', '-')}={getattr(args, name)}" for name in ("data_dir", "config") if getattr(args, name)
    ]
    argv = [sys.executable, "-m", "app.cli", *options, "doctor", "--quick", "--json", "--host", args.host,
            "--port", str(args.port)]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)


def report_preflight(preflight: subprocess.Popen[str]) -> None:
    """Each check that did not pass, as a warning line with what to do. Advisory: the checks that must stop the
    server (an unwritable data dir, an open port without keys) stop it on their own, with the same words."""
    log = logging.getLogger(SERVER_LOGGER)
    try:
        out, _ = preflight.communicate(timeout=PREFLIGHT_TIMEOUT_S)
        checks = [Check.model_validate(item) for item in json.loads(out)]
    except (subprocess.TimeoutExpired, ValueError) as exc:
        preflight.kill()
        log.warning("ragops doctor did not finish (%s, exit %s): %s", exc, preflight.poll(), preflight.stderr)
        return
    for check in checks:
        if check.status != "ok":
            log.warning("doctor: %s", check.line)


def open_governance(services: Services) -> None:
    """The state store, admission and the audit writer, opened before the first request: a database
    that cannot be reached is one line and exit 1."""
    from serving.infra.state_store import StateStoreError

    try:
        _ = services.audit
        _ = services.admission.keys.has_keys()
    except StateStoreError as exc:
        raise CliError(str(exc), EXIT_FAILURE) from exc
