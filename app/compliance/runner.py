"""Run the controls, in the report's order, into a ``ComplianceReport``. A check that raises is that control's
FAIL (with the error), never the end of the report: the other controls still run."""

from __future__ import annotations

import time
from collections.abc import Sequence

from app.compliance.access import KEY_ROTATION, KEYS_BEYOND_LOOPBACK, ROLES_IN_FORCE
from app.compliance.audit_trail import AUDIT_ANCHOR, AUDIT_CHAIN, RETENTION
from app.compliance.data_protection import BACKUPS, ERASURE, INJECTION_DETECTION, PII_REDACTION
from app.compliance.model import ComplianceReport, Control, ControlResult, Deployment, Verdict, failed
from app.compliance.release import PRODUCTION_LINEAGE, TELEMETRY
from app.version import installed_version
from serving.infra.clock import stamp

CONTROLS: tuple[Control, ...] = (
    KEYS_BEYOND_LOOPBACK,
    ROLES_IN_FORCE,
    KEY_ROTATION,
    AUDIT_CHAIN,
    AUDIT_ANCHOR,
    RETENTION,
    ERASURE,
    PII_REDACTION,
    INJECTION_DETECTION,
    BACKUPS,
    TELEMETRY,
    PRODUCTION_LINEAGE,
)


def run_control(control: Control, deployment: Deployment) -> ControlResult:
    started = time.perf_counter()
    try:
        verdict = control.check(deployment)
    except Exception as exc:  # one broken check is its control's FAIL; the report goes on
        verdict = _crashed(exc)
    return ControlResult(
        id=control.id,
        title=control.title,
        checks=control.checks,
        status=verdict.status,
        reason=verdict.reason,
        evidence=list(verdict.evidence),
        seconds=round(time.perf_counter() - started, 3),
    )


def _crashed(exc: Exception) -> Verdict:
    message = " ".join(str(exc).split())[:300]
    return failed(f"the check could not run: {type(exc).__name__}: {message}")


def run_controls(deployment: Deployment, controls: Sequence[Control] = CONTROLS) -> ComplianceReport:
    return ComplianceReport(
        generated_at=stamp(deployment.now),
        ragops_version=installed_version(),
        data_dir=str(deployment.settings.data_dir),
        host=deployment.host,
        controls=[run_control(control, deployment) for control in controls],
    )
