"""Who can reach a server: loopback or not, keys or not. ``serve`` refuses an open port without keys;
``doctor`` says the same in its ``keys`` check."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.api.hosts import is_loopback
from app.cli.common import EXIT_USAGE, CliError, open_state

if TYPE_CHECKING:
    from app.settings import Settings


def store_has_keys(settings: Settings) -> bool:
    """Whether a key was ever made in the state store. A SQLite store that does not exist yet holds none (and is
    not created here: a refused ``serve`` leaves the data dir as it found it)."""
    from serving.governance.keys import KeyStore

    if settings.database_url is None and not settings.state_path.exists():
        return False
    with open_state(settings) as store:
        return KeyStore(store).any_made()


def check_exposure(host: str, settings: Settings, has_keys: bool) -> None:
    """Refuse a non-loopback address without API keys unless ``allow_open`` says it is meant."""
    if has_keys or settings.access.allow_open or is_loopback(host):
        return
    raise CliError(
        f"refusing to serve on {host} without API keys: anyone who reaches it could read and write every "
        "tenant's documents. Set RAGOPS_API_KEYS or create a key (ragops keys create), or listen on 127.0.0.1 "
        "(the default), or set RAGOPS_ALLOW_OPEN=true if an open service is meant",
        EXIT_USAGE,
    )
