"""Structured logs: one JSON object per line, with the request id, and PII and secrets redacted.

``ragops serve`` installs this on the root logger (uvicorn's loggers included). The request id comes from the
``X-Request-ID`` header or is made up, is echoed in the response, and tags every line logged while the request
is handled (a context variable, so threads serving the request see it too).

Redaction is for the callers' data. The server's own lines about itself (its bind address, a failed bind) are
its operator's configuration and are logged as they are: uvicorn's, recognised by their template (code, never
the formatted text), and those of the ``ragops.server`` logger.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from app.startup import START_LOGGER
from safety.pii import redact, redact_values

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

SERVER_LOGGER = "ragops.server"
_UVICORN_SERVER_TEMPLATES = ("Uvicorn running on ",)

# Attributes every LogRecord has: the rest are the caller's ``extra`` fields.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        plain = is_server_message(record)
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage() if plain else redact(record.getMessage()),
            "request_id": request_id.get(),
        }
        extra = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        payload.update(extra if plain else redact_values(extra))
        if record.exc_info:
            payload["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(payload, ensure_ascii=False, default=str)


def is_server_message(record: logging.LogRecord) -> bool:
    """A line about the server itself, with no user data in it."""
    if record.name in (SERVER_LOGGER, START_LOGGER):
        return True
    if not record.name.startswith("uvicorn.error"):
        return False
    # uvicorn logs a failed bind as the OSError itself ("... while attempting to bind on address ...").
    return isinstance(record.msg, OSError) or (
        isinstance(record.msg, str) and record.msg.startswith(_UVICORN_SERVER_TEMPLATES)
    )


def is_quantizer_chatter(record: logging.LogRecord) -> bool:
    """onnxruntime's quantizer logs a line per tensor to the root logger (a first start's ONNX export: about
    100 lines of "Quantization parameters for tensor ..."), which would bury the start's own progress lines."""
    return record.levelno < logging.ERROR and "onnxruntime/quantization" in record.pathname.replace("\\", "/")


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(lambda record: not is_quantizer_chatter(record))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", START_LOGGER):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


class StderrLines(logging.Handler):
    """Plain lines to whatever ``sys.stderr`` is when a record comes (a redirect, a test's capture), as Python's
    last-resort handler writes them: not to the stream there was when it was installed."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:  # a closed stream: logging's own rule, never raise from a handler
            self.handleError(record)


def configure_cli_progress() -> None:
    """A CLI command's slow start steps (a first ONNX export, a model load) as plain lines on stderr: the
    command's own output stays on stdout, and without a handler these lines would be dropped. Once a process:
    ``main`` may run many commands (the tests do), and each call must not stack another handler."""
    progress = logging.getLogger(START_LOGGER)
    if any(isinstance(handler, StderrLines) for handler in progress.handlers):
        return
    lines = StderrLines()
    lines.setFormatter(logging.Formatter("ragops: %(message)s"))
    progress.addHandler(lines)
    progress.setLevel(logging.INFO)
    root = logging.getLogger()
    if not root.handlers:  # else someone (a test harness) already decided where warnings go
        warnings = StderrLines(logging.WARNING)  # the last-resort handler's lines, less the quantizer's
        warnings.addFilter(lambda record: not is_quantizer_chatter(record))
        root.addHandler(warnings)
