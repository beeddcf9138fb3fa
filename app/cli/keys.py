"""``ragops keys create|list|revoke|rotate``: API keys in the state store (SQLite under the data dir, or Postgres
with ``RAGOPS_DATABASE_URL``), beside the settings' ``RAGOPS_API_KEYS``, which ``list`` shows too.

A new key is printed once (only its hash is stored): keep it then. Works while a server runs on the same store;
a server notices a revocation within ``key_cache_s`` seconds. Exit codes: 0 ok; 1 the store cannot be opened;
2 bad input, an unknown key id, a key from ``RAGOPS_API_KEYS`` (remove it there instead), or a revoked or expired
key to rotate (one line on stderr, nothing changed).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from app.cli.common import EXIT_OK, CliError, open_state, settings_from
from serving.governance.access import KeyLimits, Role

if TYPE_CHECKING:
    from app.cli.common import Commands
    from serving.governance.keys import ApiKeyRecord, IssuedKey, KeyStore


def add_parser(commands: Commands) -> None:
    keys = commands.add_parser("keys", help="API keys: create, list, revoke, rotate")
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="make a key (printed once)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--role", required=True, choices=[role.value for role in Role])
    create.add_argument("--name", default="")
    create.add_argument("--expires", metavar="30d|2027-01-01", help="a duration from now, or a date or ISO time")
    create.add_argument("--rpm", type=int, help="requests per minute (default: the role's)")
    create.add_argument("--tokens-per-day", type=int, help="tokens per day (default: the role's)")
    create.add_argument("--json", action="store_true")
    create.set_defaults(handler=run_create)
    listing = actions.add_parser("list", help="every key (store and RAGOPS_API_KEYS), never a secret")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=run_list)
    revoke = actions.add_parser("revoke", help="revoke a key now")
    revoke.add_argument("key_id", metavar="ID")
    revoke.set_defaults(handler=run_revoke)
    rotate = actions.add_parser("rotate", help="a new key for the same tenant and role; the old one expires later")
    rotate.add_argument("key_id", metavar="ID")
    rotate.add_argument("--grace", default="24h", help="how long the old key keeps working: 0, 90s, 15m, 24h (<=30d)")
    rotate.add_argument("--json", action="store_true")
    rotate.set_defaults(handler=run_rotate)


@contextmanager
def _key_store(args: argparse.Namespace) -> Iterator[KeyStore]:
    """The store's keys; a store that cannot open is a runtime failure (exit 1), bad input is exit 2."""
    from serving.governance.keys import KeyNotFoundError, KeyStateError, KeyStore

    with open_state(settings_from(args)) as store:
        try:
            yield KeyStore(store)
        except (KeyNotFoundError, KeyStateError, ValueError) as exc:
            raise CliError(str(exc)) from exc


def run_create(args: argparse.Namespace) -> int:
    from serving.governance.keys import expiry_from
    from serving.infra.clock import parse_stamp, utc_now

    with _key_store(args) as keys:
        expires = expiry_from(args.expires, parse_stamp(utc_now())) if args.expires else None
        issued = keys.create(args.tenant, Role(args.role), args.name, expires, KeyLimits(args.rpm, args.tokens_per_day))
        every = _every_key(args, keys)
    _print_issued(issued, args.json)
    _warn_without_admin(every)
    return EXIT_OK


def run_list(args: argparse.Namespace) -> int:
    with _key_store(args) as keys:
        records = _every_key(args, keys)
    if args.json:
        print(json.dumps([record.model_dump(mode="json") for record in records]))
    else:
        _print_table(records)
    _warn_without_admin(records)
    return EXIT_OK


def _every_key(args: argparse.Namespace, keys: KeyStore) -> list[ApiKeyRecord]:
    """The store's keys and the settings' (``RAGOPS_API_KEYS``): every key a server checks."""
    from serving.governance.keys import EnvKeys

    return keys.list() + EnvKeys(settings_from(args).access.api_keys).records()


ADMIN_KEY_COMMAND = "ragops keys create --tenant ops --role admin --name admin"


def _warn_without_admin(records: list[ApiKeyRecord]) -> None:
    """Keys but no active admin key: a server then refuses every caller its admin routes (keys, prompt labels,
    the audit trail, erasure), and only the CLI can make an admin key. Said on stderr, with the command."""
    from serving.infra.clock import utc_now

    now = utc_now()
    if records and not any(r.role == Role.admin and r.status(now) == "active" for r in records):
        print(f"warning: no active admin key: a server with keys refuses every caller its admin routes (keys, "
              f"labels, audit, erasure); make one with `{ADMIN_KEY_COMMAND}`", file=sys.stderr)  # fmt: skip


def run_revoke(args: argparse.Namespace) -> int:
    _refuse_env_key(args)
    with _key_store(args) as keys:
        record = keys.revoke(args.key_id)
    print(f"revoked {record.id} (tenant {record.tenant}, role {record.role.value}) at {record.revoked_at}")
    return EXIT_OK


def run_rotate(args: argparse.Namespace) -> int:
    from serving.governance.keys import grace_from

    _refuse_env_key(args)
    with _key_store(args) as keys:
        issued = keys.rotate(args.key_id, grace_from(args.grace))
        old = keys.get(args.key_id)
    _print_issued(issued, args.json)
    if old is not None and not args.json:
        print(f"the old key {old.id} stops working at {old.expires_at}", file=sys.stderr)
    return EXIT_OK


def _refuse_env_key(args: argparse.Namespace) -> None:
    from serving.governance.keys import EnvKeyError, EnvKeys

    try:
        EnvKeys(settings_from(args).access.api_keys).refuse_change(args.key_id)
    except EnvKeyError as exc:
        raise CliError(str(exc)) from exc


def _print_issued(issued: IssuedKey, as_json: bool) -> None:
    if as_json:
        print(json.dumps(issued.body()))
        return
    record = issued.record
    print(f"id: {record.id} (tenant {record.tenant}, role {record.role.value}, expires {record.expires_at or 'never'})")
    print(f"key: {issued.key}")
    print("the key is shown this once, and only its hash is stored: keep it now", file=sys.stderr)


_COLUMNS = ("id", "name", "tenant", "role", "created", "expires", "revoked", "last used", "source")


def _print_table(records: list[ApiKeyRecord]) -> None:
    rows = [_COLUMNS] + [_row(record) for record in records]
    widths = [max(len(row[column]) for row in rows) for column in range(len(_COLUMNS))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _row(r: ApiKeyRecord) -> tuple[str, ...]:
    times = (r.created_at, r.expires_at, r.revoked_at, r.last_used_at)
    return (r.id, _escaped(r.name) or "-", r.tenant, r.role.value, *map(_minute, times), r.source)


def _escaped(text: str) -> str:
    """A stored name as the table shows it: an unprintable character (a store written before names were checked,
    or edited) as its escape, ``\\x85``, never raw to the terminal."""
    from serving.governance.keys import is_unprintable

    return "".join(char.encode("unicode_escape").decode() if is_unprintable(char) else char for char in text)


def _minute(moment: str | None) -> str:
    """A stored time to the minute, as a table shows it: ``2026-11-27 05:12``."""
    return moment[:16].replace("T", " ") if moment else "-"
