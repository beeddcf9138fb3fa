"""The audit trail's controls: the chain verifies, its anchor kept outside the database still holds and is kept
up, and retention ran within its period (each run leaves an admin record in the trail)."""

from __future__ import annotations

import json
from datetime import timedelta

from app.compliance.model import WARNING, Control, Deployment, Verdict, failed, not_applicable, passed
from serving.governance.audit_chain import Anchor, check_anchor, verify
from serving.governance.audit_export import newest_admin_action, read_page
from serving.infra.clock import parse_stamp
from serving.rights import RETENTION_ACTION

# The server applies retention daily; half a day more covers a restart or a slow run before the control fails.
RETENTION_OVERDUE_AFTER = timedelta(hours=36)
# Records the anchor does not cover yet may be this old (or audit_anchor_every_s times this many, when longer):
# the server anchors every audit_anchor_every_s while it writes, a daily `ragops audit anchor --out` cron daily.
ANCHOR_LAG = timedelta(days=1)
ANCHOR_LAG_PERIODS = 3


def _age(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"


def check_audit_chain(deployment: Deployment) -> Verdict:
    if not deployment.settings.audit:
        return failed("the audit trail is off (audit=false): requests and admin actions are not recorded")
    result = verify(deployment.state)
    evidence = [f"head: {result.head_seq}:{result.head_hash}", f"records checked: {result.records}"]
    if result.checkpoint_seq:
        evidence.append(f"pruned before: the chain starts after checkpoint {result.checkpoint_seq}")
    if result.first_bad is not None:
        bad = result.first_bad
        return failed(f"the audit chain is broken at record {bad.seq}: {bad.kind}: {bad.reason}", *evidence)
    return passed(f"the audit chain verifies: {result.records} records re-hashed up to its head", *evidence)


def check_audit_anchor(deployment: Deployment) -> Verdict:
    settings = deployment.settings
    path = settings.audit_anchor_file
    if path is None:
        return not_applicable(
            "no anchor file is configured (audit_anchor_file)",
            f"{WARNING}without a head kept away from the database, a rewrite of the whole chain would verify",
        )
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as exc:
        return failed(f"the anchor file {path} cannot be read: {exc.strerror or exc}")
    if not lines:
        return failed(f"the anchor file {path} holds no anchor yet")
    try:
        anchor = Anchor.parse(lines[-1])
    except ValueError:
        return failed(f"the last line of the anchor file {path} is not an anchor")
    evidence = [f"anchor file: {path} ({len(lines)} anchors)", f"last anchor: {anchor.seq}:{anchor.hash}"]
    if anchor.ts:
        evidence.append(f"anchored at: {anchor.ts}")
    try:
        rewritten = check_anchor(deployment.state, anchor.seq, anchor.hash)
    except ValueError as exc:
        return failed(f"the last anchor cannot be checked: {exc}", *evidence)
    if rewritten is not None:
        return failed(f"the chain no longer holds its anchor: record {rewritten.seq}: {rewritten.reason}", *evidence)
    allowed = max(ANCHOR_LAG, timedelta(seconds=ANCHOR_LAG_PERIODS * settings.audit_anchor_every_s))
    unanchored = read_page(deployment.state, None, None, anchor.seq, 1)
    if unanchored:
        waiting = deployment.now - parse_stamp(str(unanchored[0]["ts"]))
        evidence.append(f"oldest record after the anchor: seq {unanchored[0]['seq']}, {_age(waiting)} old")
        if waiting > allowed:
            return failed(
                f"records written {_age(waiting)} ago are not anchored yet (allowed: {_age(allowed)}): "
                "the anchor file is not being kept up",
                *evidence,
            )
    return passed(
        f"the chain holds its last anchor (seq {anchor.seq}), and what came after is within {_age(allowed)} of it",
        *evidence,
    )


def check_retention(deployment: Deployment) -> Verdict:
    run = newest_admin_action(deployment.state, RETENTION_ACTION)
    if run is None:
        return failed(
            f"no retention run in the audit trail (no {RETENTION_ACTION!r} record): `ragops retention "
            "apply` or a server's daily run never ran here"
        )
    since = deployment.now - parse_stamp(run.ts)
    evidence = [f"last run: record {run.seq} at {run.ts} ({_age(since)} ago)", f"target: {run.target}"]
    if run.detail:
        evidence.append(f"detail: {json.dumps(run.detail, sort_keys=True)[:600]}")
    if run.status >= 400:
        return failed(
            f"the last retention run ({_age(since)} ago) did not complete: some store was not pruned (its "
            "record's detail says which)",
            *evidence,
        )
    if since > RETENTION_OVERDUE_AFTER:
        return failed(
            f"retention is overdue: it last ran {_age(since)} ago (it runs daily; allowed "
            f"{_age(RETENTION_OVERDUE_AFTER)})",
            *evidence,
        )
    return passed(f"retention ran {_age(since)} ago", *evidence)


AUDIT_CHAIN = Control(
    id="audit-chain",
    title="Audit chain verifies",
    checks="The audit trail is on and its hash chain re-hashes from its start (or last checkpoint) to its head: "
    "no record edited, removed, inserted or reordered, and the usage ledger adds up.",
    check=check_audit_chain,
)
AUDIT_ANCHOR = Control(
    id="audit-anchor",
    title="Audit anchor holds and is recent",
    checks="The last head in audit_anchor_file is still in the chain, and no record after it waited longer than "
    "a day (or 3 x audit_anchor_every_s) to be anchored. NA when no anchor file is configured.",
    check=check_audit_anchor,
)
RETENTION = Control(
    id="retention",
    title="Retention applied within its period",
    checks="The newest retention run in the audit trail (admin action retention.apply) is from the last 36 hours "
    "(retention runs daily) and completed: every store it prunes was pruned.",
    check=check_retention,
)
