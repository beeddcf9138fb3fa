"""What every command shares: the error type and exit codes, settings and services from the global flags, the
(collection, tenant) scope, and the JSON-lines reader of the stdin and ``--queries`` commands."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar, get_args

from pydantic import ValidationError

from app.settings import GeneratorBackend, Settings, flat_name, load_settings
from retrieval.index import SCOPE_NAME_RULE, Scope, is_scope_name
from serving.answering.rewrite import RewriterName

if TYPE_CHECKING:
    from app.container import Services
    from retrieval.index import SnapshotIndex
    from serving.infra.state_store import StateStore

    Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

Handler: TypeAlias = Callable[[argparse.Namespace], int]
T = TypeVar("T")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3
API_KEY_ENV = "RAGOPS_API_KEY"  # where a command that calls a server over HTTP finds its key
GENERATORS = get_args(GeneratorBackend)
REWRITERS = get_args(RewriterName)


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def settings_from(args: argparse.Namespace, **overrides: Any) -> Settings:
    """The settings of ``--config`` and ``--data-dir`` (then the environment), with ``overrides`` on top."""
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    try:
        return load_settings(args.config, **overrides)
    except FileNotFoundError as exc:
        raise CliError(str(exc)) from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        raise CliError(f"invalid setting {flat_name(first['loc'])}: {first['msg']}") from exc


def open_services(settings: Settings, busy_hint: str | None = None) -> Services:
    """The wired parts; close them when done. An index that cannot open is a runtime failure (exit 1); one that
    a running server holds gets ``busy_hint`` (what the command can do through that server instead)."""
    from app.container import build_services
    from retrieval.index import IndexBusyError, IndexUnavailableError

    try:
        return build_services(settings)
    except IndexBusyError as exc:
        raise CliError(f"{exc}; {busy_hint}" if busy_hint else str(exc), EXIT_FAILURE) from exc
    except IndexUnavailableError as exc:
        raise CliError(str(exc), EXIT_FAILURE) from exc


@contextmanager
def open_state(settings: Settings) -> Iterator[StateStore]:
    """The state store alone (no index, no model); one that cannot open or stops answering is a runtime
    failure (exit 1)."""
    from serving.infra.state_store import StateStore, StateStoreError

    try:
        store = StateStore.open(settings.database_url, settings.state_path)
        try:
            yield store
        finally:
            store.close()
    except StateStoreError as exc:
        raise CliError(str(exc), EXIT_FAILURE) from exc


def moment_arg(text: str, flag: str) -> datetime:
    """A ``--since``/``--before`` value: a date, an ISO time or a duration ago (``clock.parse_moment``)."""
    from serving.infra.clock import parse_moment

    try:
        return parse_moment(text)
    except ValueError as exc:
        raise CliError(f"{flag}: {exc}") from exc


def with_snapshot_index(settings: Settings, act: Callable[[SnapshotIndex], T]) -> T:
    """``act`` on the embedded index (refused for a Qdrant server; exit 1 while a server holds the index)."""
    from retrieval.index import IndexUnavailableError, SnapshotIndex

    services = open_services(settings)
    try:
        index = services.index
        if not isinstance(index, SnapshotIndex):
            raise CliError("snapshots and backups cover the embedded index; use Qdrant's own snapshots for a server")
        return act(index)
    except IndexUnavailableError as exc:
        raise CliError(str(exc), EXIT_FAILURE) from exc
    finally:
        services.close()


def scope_from(args: argparse.Namespace, settings: Settings) -> Scope:
    """The (collection, tenant) of ``--collection`` and ``--tenant``, or the settings' defaults."""
    names = []
    for what, value, default in (
        ("collection", args.collection, settings.defaults.collection),
        ("tenant", args.tenant, settings.defaults.tenant),
    ):
        name = value or default
        if not is_scope_name(name):
            raise CliError(f"{what} must be {SCOPE_NAME_RULE}: {name!r}")
        names.append(name)
    return Scope(*names)


def read_json_lines(lines: Iterable[str], where: str, required: tuple[str, ...]) -> list[tuple[int, dict[str, Any]]]:
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
