"""``ragops compliance report``: a default install with an admin key, a recent retention run and a backup passes
``--strict``; each of the faults the report exists for fails it with exit 1, naming its control: no keys on
0.0.0.0, an audit record edited in SQLite, retention overdue, a key older than the rotation policy. The JSON
parses into the report's model and the HTML page escapes what it shows; the anchor control is NA without an
anchor file and fails when records wait unanchored; a dry-run restore changes nothing. Real parts throughout: the
CLI in process, the SQLite state store, the shipped probe sets; the faults are made by editing the store as an
attacker or a neglected deployment would leave it."""

from __future__ import annotations

import json
import shutil
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from app.cli import main
from app.compliance.model import ComplianceReport
from serving.governance.audit import AuditAction, AuditRecord, append_records
from serving.infra.clock import stamp
from serving.infra.state_store import StateStore
from serving.rights import RETENTION_ACTION


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Path]:
    """A fresh deployment's folder, made once: ``data/`` (a state store, an empty index) and ``backups/`` with a
    backup of it (``ragops backup create``). No key and no retention run: each test adds what it needs."""
    folder = tmp_path_factory.mktemp("compliance-template")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAGOPS_MODELS_DIR", str(models_dir))
        assert main(["--data-dir", str(folder / "data"), "backup", "create", str(folder / "backups" / "b.tar")]) == 0
    yield folder


class Deployment:
    """A copy of the template to change and report on."""

    def __init__(self, folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
        self.folder, self.capsys = folder, capsys
        self.data, self.backups = folder / "data", folder / "backups"
        monkeypatch.setenv("RAGOPS_BACKUP_DIR", str(self.backups))

    def ragops(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main(["--data-dir", str(self.data), *argv])
        out, err = self.capsys.readouterr()
        return code, out, err

    def make_admin_key(self) -> str:
        code, out, err = self.ragops("keys", "create", "--tenant", "default", "--role", "admin", "--json")
        assert code == 0, err
        return str(json.loads(out)["id"])

    def record_retention_run(self, ago: timedelta = timedelta(minutes=5)) -> None:
        """What ``ragops retention apply`` appends on every run (written here so the age can be chosen)."""
        record = AuditRecord(
            ts=stamp(datetime.now(UTC) - ago), request_id=uuid.uuid4().hex, method="CLI",
            route="ragops retention apply", status=200, outcome="ok", latency_ms=1.0,
            admin=AuditAction(action=RETENTION_ACTION, target="answers", detail={"complete": True}),
        )  # fmt: skip
        store = StateStore.open(None, self.data / "state.sqlite")
        try:
            with store.transaction(write=True) as cur:
                append_records(cur, [record])
        finally:
            store.close()

    def sql(self, statement: str, *params: object) -> None:
        with sqlite3.connect(self.data / "state.sqlite") as db:
            changed = db.execute(statement, params).rowcount
        db.close()
        assert changed == 1, statement

    def report(self, *options: str) -> tuple[int, str, str]:
        return self.ragops("compliance", "report", *options)


@pytest.fixture
def deployment(
    template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Deployment:
    folder = tmp_path / "<b>deploy&co</b>"  # shown in the report: the HTML must escape it
    shutil.copytree(template, folder)
    return Deployment(folder, monkeypatch, capsys)


def test_a_default_install_with_an_admin_key_passes_strict_as_json_and_html(deployment: Deployment) -> None:
    key_id = deployment.make_admin_key()
    deployment.record_retention_run()
    page = deployment.folder / "report.html"

    code, out, err = deployment.report("--strict", "--json", "--html", str(page))

    assert code == 0, err
    report = ComplianceReport.model_validate_json(out)
    statuses = {result.id: result.status for result in report.controls}
    assert report.failed == [] and json.loads(out)["failed"] == []
    assert statuses == {
        "keys-beyond-loopback": "PASS", "roles-in-force": "PASS", "key-rotation": "PASS", "audit-chain": "PASS",
        "audit-anchor": "NA", "retention": "PASS", "erasure": "PASS", "pii-redaction": "PASS",
        "injection-detection": "PASS", "backups": "PASS", "telemetry": "PASS", "production-lineage": "PASS",
    }  # fmt: skip
    by_id = {result.id: result for result in report.controls}
    assert by_id["erasure"].reason.startswith("a planted user and document erased on a copy of the state store")
    assert any(key_id in line for line in by_id["roles-in-force"].evidence)
    assert by_id["telemetry"].reason.startswith("none: nothing leaves the machine")
    assert sum(result.seconds for result in report.controls) < 30
    html = page.read_text(encoding="utf-8")
    assert "&lt;b&gt;deploy&amp;co&lt;/b&gt;" in html and "<b>deploy" not in html
    assert "<script" not in html and "<link" not in html and "src=" not in html  # self-contained
    assert all(f'id="{result.id}"' in html for result in report.controls)


def test_the_text_report_names_each_control_and_without_strict_a_failure_exits_0(deployment: Deployment) -> None:
    code, out, err = deployment.report("--host", "0.0.0.0")  # no key, no retention run
    assert code == 0, err
    assert "FAIL  keys-beyond-loopback: the server binds 0.0.0.0, beyond loopback, and no active API key" in out
    assert out.splitlines()[-1].startswith("12 controls: ")


def make_old_key(deployment: Deployment) -> None:
    key_id = deployment.make_admin_key()
    deployment.sql("UPDATE api_keys SET created_at = '2020-01-01T00:00:00.000000Z' WHERE id = ?", key_id)


def edit_an_audit_record(deployment: Deployment) -> None:
    deployment.make_admin_key()
    deployment.sql("UPDATE audit_records SET body = replace(body, '\"status\":200', '\"status\":201') WHERE seq = 1")


@pytest.mark.parametrize(
    ("control", "fault", "host", "said"),
    [
        ("keys-beyond-loopback", lambda d: None, "0.0.0.0", "no active API key exists"),
        ("audit-chain", edit_an_audit_record, "127.0.0.1", "broken at record 1: edited"),
        ("retention", lambda d: d.make_admin_key(), "127.0.0.1", "retention is overdue"),
        ("key-rotation", make_old_key, "127.0.0.1", "older than the 90-day rotation policy"),
    ],
    ids=["no-keys-on-0.0.0.0", "audit-record-edited", "retention-overdue", "unrotated-old-key"],
)
def test_each_fault_fails_strict_naming_its_control(
    deployment: Deployment, control: str, fault: Callable[[Deployment], object], host: str, said: str
) -> None:
    deployment.record_retention_run(timedelta(days=3) if control == "retention" else timedelta(minutes=5))
    fault(deployment)

    code, out, err = deployment.report("--strict", "--json", "--host", host)

    assert code == 1, err
    assert err.startswith("ragops: error: compliance: ") and control in err, err
    report = ComplianceReport.model_validate_json(out)
    result = next(result for result in report.controls if result.id == control)
    assert result.status == "FAIL" and said in result.reason, result
    assert control in report.failed


def test_a_dry_run_restore_checks_an_archive_and_changes_nothing(deployment: Deployment) -> None:
    archive = deployment.backups / "b.tar"
    state = deployment.data / "state.sqlite"
    before = state.read_bytes()
    code, out, err = deployment.ragops("backup", "restore", str(archive), "--dry-run")
    assert code == 0 and "restorable (dry run, nothing changed)" in out, err
    truncated = deployment.backups / "newer.tar"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    code, _, err = deployment.ragops("backup", "restore", str(truncated), "--dry-run")
    assert code in (1, 2) and "not a" in err, err
    assert state.read_bytes() == before


def test_a_data_dir_without_a_state_store_is_bad_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--data-dir", str(tmp_path / "nothing"), "compliance", "report"]) == 2
    assert "no state store at" in capsys.readouterr().err
    assert not (tmp_path / "nothing").exists()


def test_the_anchor_control_is_na_without_a_file_and_fails_when_records_wait_unanchored(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.cli.common import open_state
    from app.compliance.audit_trail import AUDIT_ANCHOR
    from app.compliance.model import Deployment as Facts
    from app.compliance.runner import run_control
    from app.settings import load_settings

    def anchor_result() -> tuple[str, str]:
        settings = load_settings(data_dir=deployment.data)
        with open_state(settings) as state:
            result = run_control(AUDIT_ANCHOR, Facts(settings=settings, host="127.0.0.1", state=state,
                                                     now=datetime.now(UTC)))  # fmt: skip
        return result.status, result.reason

    assert anchor_result()[0] == "NA"
    anchors = deployment.folder / "anchors.jsonl"
    monkeypatch.setenv("RAGOPS_AUDIT_ANCHOR_FILE", str(anchors))
    assert anchor_result() == ("FAIL", f"the anchor file {anchors} cannot be read: No such file or directory")
    deployment.record_retention_run()
    assert deployment.ragops("audit", "anchor", "--out", str(anchors))[0] == 0
    assert anchor_result()[0] == "PASS"
    deployment.record_retention_run(ago=timedelta(days=2))  # written after the anchor, never anchored
    status, reason = anchor_result()
    assert status == "FAIL" and "not anchored yet" in reason, reason
