"""The access controls: keys where the server is reachable beyond this machine, roles in force, keys rotated.
Keys are named by id (never a secret); keys from ``RAGOPS_API_KEYS`` count beside the state store's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.api.hosts import is_loopback
from app.compliance.model import WARNING, Control, Deployment, Verdict, failed, not_applicable, passed
from serving.governance.access import Role
from serving.governance.keys import ApiKeyRecord, EnvKeys, KeyStore
from serving.infra.clock import parse_stamp, stamp

if TYPE_CHECKING:
    from datetime import datetime


@dataclass(frozen=True)
class KeyInventory:
    """Every key the server would check: the store's and the settings', and the store's keys whose role no role
    of this version is (``list`` refuses those rows, so they are read apart)."""

    store: list[ApiKeyRecord]
    env: list[ApiKeyRecord]
    unknown_roles: dict[str, str]  # key id -> the role as stored
    now: datetime

    def active(self) -> list[ApiKeyRecord]:
        now = stamp(self.now)
        return [key for key in [*self.store, *self.env] if key.status(now) == "active"]


def key_inventory(deployment: Deployment) -> KeyInventory:
    keys = KeyStore(deployment.state)
    stored_roles = keys.stored_roles()
    unknown = {key_id: role for key_id, role in stored_roles.items() if role not in Role.__members__}
    if unknown:
        store = [record for key_id in stored_roles if key_id not in unknown and (record := keys.get(key_id))]
    else:
        store = keys.list()
    env = EnvKeys(deployment.settings.access.api_keys).records()
    return KeyInventory(store=store, env=env, unknown_roles=unknown, now=deployment.now)


def _keys(count: int) -> str:
    return f"{count} active key{'' if count == 1 else 's'}"


def _ids(keys: list[ApiKeyRecord], limit: int = 10) -> str:
    names = [key.id for key in keys[:limit]]
    return ", ".join(names) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def check_keys_beyond_loopback(deployment: Deployment) -> Verdict:
    host, access = deployment.host, deployment.settings.access
    inventory = key_inventory(deployment)
    active = inventory.active()
    evidence = [f"bind host: {host} (--host)", f"active keys: {len(active)}", f"allow_open: {access.allow_open}"]
    if is_loopback(host):
        return passed(f"the server binds {host}, a loopback address: only this machine can connect", *evidence)
    if not active and (inventory.store or inventory.unknown_roles):
        return failed(
            f"the server binds {host}, beyond loopback, and no key is active (every key made here is "
            "revoked or expired): it refuses everyone until a new key is made",
            *evidence,
        )
    if not active:
        opened = " (allow_open lets serve start so)" if access.allow_open else ""
        return failed(
            f"the server binds {host}, beyond loopback, and no active API key exists: anyone who reaches it reads "
            f"and writes every tenant's documents{opened}",
            *evidence,
        )
    return passed(
        f"the server binds {host}, beyond loopback, and every request needs one of {_keys(len(active))}", *evidence
    )


def check_roles_in_force(deployment: Deployment) -> Verdict:
    inventory = key_inventory(deployment)
    if inventory.unknown_roles:
        named = ", ".join(f"{key_id} ({role!r})" for key_id, role in sorted(inventory.unknown_roles.items()))
        return failed(f"keys with a role this version does not know: {named}")
    active = inventory.active()
    by_role = {role: [key for key in active if key.role == role] for role in Role}
    evidence = [f"active {role.value} keys: {len(keys)} ({_ids(keys) or 'none'})" for role, keys in by_role.items()]
    if not active:
        return failed("no active API key: roles are not in force (without keys every caller acts as admin)", *evidence)
    if not by_role[Role.admin]:
        return failed("no active admin key: nobody can manage keys, prompt labels or the audit trail", *evidence)
    return passed(f"{_keys(len(active))}, each in a known role; {len(by_role[Role.admin])} admin", *evidence)


def check_key_rotation(deployment: Deployment) -> Verdict:
    inventory, days = key_inventory(deployment), deployment.settings.access.key_rotation_days
    active = inventory.active()
    replaced = {key.rotated_from for key in inventory.store if key.rotated_from}
    # A key rotated away keeps working until its grace ends (a set expiry): it is on its way out, not unrotated.
    leaving = [key for key in active if key.id in replaced and key.expires_at is not None]
    dated = [key for key in active if key.created_at is not None and key not in leaving]
    evidence = [f"rotation policy: {days} days (key_rotation_days)"]
    if leaving:
        evidence.append(f"rotated, in their grace period: {_ids(leaving)}")
    if undated := [key for key in active if key.created_at is None]:
        evidence.append(
            f"{WARNING}{len(undated)} key(s) from RAGOPS_API_KEYS carry no creation time: rotate them "
            f"where they are set ({_ids(undated)})"
        )
    if not dated:
        return not_applicable("no active key from the state store to age", *evidence)
    ages = {key.id: (deployment.now - parse_stamp(str(key.created_at))).days for key in dated}
    old = [key for key in dated if ages[key.id] >= days]
    if old:
        named = ", ".join(f"{key.id} ({ages[key.id]} days)" for key in old)
        return failed(
            f"keys older than the {days}-day rotation policy: {named}; rotate them with `ragops keys rotate ID`",
            *evidence,
        )
    return passed(f"{_keys(len(dated))}, the oldest {max(ages.values())} days old (policy {days} days)", *evidence)


KEYS_BEYOND_LOOPBACK = Control(
    id="keys-beyond-loopback",
    title="Keys required beyond loopback",
    checks="A server bound to a non-loopback address (--host) has at least one active API key, so that no "
    "request is served without one.",
    check=check_keys_beyond_loopback,
)
ROLES_IN_FORCE = Control(
    id="roles-in-force",
    title="Roles in force",
    checks="At least one active admin key exists, and every key holds a role this version knows "
    "(reader, editor, admin).",
    check=check_roles_in_force,
)
KEY_ROTATION = Control(
    id="key-rotation",
    title="No key older than the rotation policy",
    checks="No active key from the state store was made more than key_rotation_days ago (a rotated key in its "
    "grace period is on its way out and not counted).",
    check=check_key_rotation,
)
