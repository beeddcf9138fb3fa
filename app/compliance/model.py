"""The shapes of the compliance report: a ``Control`` (what it checks, and the check), the ``Verdict`` a check
returns, the ``ControlResult`` the report holds for it, and the ``ComplianceReport`` itself."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

if TYPE_CHECKING:
    from app.settings import Settings
    from serving.infra.state_store import StateStore

Status = Literal["PASS", "FAIL", "NA"]
STATUSES: tuple[Status, ...] = ("PASS", "FAIL", "NA")
WARNING = "warning: "  # how an evidence line that does not fail the control, but an auditor should read, starts


@dataclass(frozen=True, kw_only=True)
class Deployment:
    """What the controls look at: the settings (of ``--config``, ``--data-dir`` and the environment), the host the
    server binds (``--host``: the CLI cannot see it from the data dir), the open state store, and the moment of
    the report (one ``now`` for every control)."""

    settings: Settings
    host: str
    state: StateStore
    now: datetime


@dataclass(frozen=True)
class Verdict:
    """What a check finds: its status, one line saying why, and the evidence behind it."""

    status: Status
    reason: str
    evidence: tuple[str, ...] = ()


def passed(reason: str, *evidence: str) -> Verdict:
    return Verdict("PASS", reason, evidence)


def failed(reason: str, *evidence: str) -> Verdict:
    return Verdict("FAIL", reason, evidence)


def not_applicable(reason: str, *evidence: str) -> Verdict:
    return Verdict("NA", reason, evidence)


@dataclass(frozen=True, kw_only=True)
class Control:
    """One control: its id (what ``--strict`` names when it fails), its title, what it checks, and the check."""

    id: str
    title: str
    checks: str
    check: Callable[[Deployment], Verdict]


class ControlResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    title: str
    checks: str = Field(description="What the control checks.")
    status: Status
    reason: str = Field(description="One line: why this status.")
    evidence: list[str] = Field(description="What the check saw (key ids, never secrets; counts, times, hashes).")
    seconds: float = Field(description="How long the check took.")


class ComplianceReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    generated_at: str
    ragops_version: str
    data_dir: str
    host: str = Field(description="The bind host the report assumed (--host).")
    controls: list[ControlResult]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def failed(self) -> list[str]:
        """The ids of the controls that failed: what ``--strict`` exits 1 on."""
        return [result.id for result in self.controls if result.status == "FAIL"]

    def counts(self) -> dict[Status, int]:
        return {status: sum(r.status == status for r in self.controls) for status in STATUSES}
