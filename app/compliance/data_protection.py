"""The data-protection controls: erasure (a self-test on a scratch copy), PII redaction measured on the shipped
probe set, injection detection on the held-out set, and backups present and restorable."""

from __future__ import annotations

import time
from pathlib import Path

from app.cli.common import CliError
from app.compliance.model import WARNING, Control, Deployment, Verdict, failed, not_applicable, passed
from serving.infra.clock import parse_stamp

# Recall floor of the PII probe, over the kinds safety.pii detects: 9 in 10 values redacted whole. The probe holds
# two values on purpose that a pattern redactor misses (an email spelled out with "at" and "dot", a compressed
# IPv6 address): measured 36/38 = 0.947; losing two more formats (34/38 = 0.895) fails.
PII_RECALL_MIN = 0.90
# Benign lines redact may alter: over-redaction costs readability, not privacy (measured 1/22, an invoice number
# read as a phone number).
PII_BENIGN_ALTERED_MAX = 0.10
INJECTION_DETECTION_MIN = 0.90  # held-out planted attacks flagged (measured 128/133 = 0.962)
INJECTION_FALSE_POSITIVES_MAX = 0.005  # held-out benign passages flagged (measured 3/6,697 = 0.045%)
BACKUP_PATTERN = "*.tar"  # what `ragops backup create FILE` writes, by the name the backup dir's archives take


def check_erasure(deployment: Deployment) -> Verdict:
    """``serving.rights.erasure_check``: a planted user and document erased on a scratch copy of the state store."""
    import tempfile

    from serving.rights.erasure_check import UNFINISHED_ERASURE_LIMIT, erasure_self_test, unfinished_erasures

    data_dir = deployment.settings.data_dir  # the copy stays on the data dir's disk (and its encryption)
    data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".erasure-self-test-", dir=data_dir) as scratch:
        result = erasure_self_test(deployment.state, Path(scratch))
    unfinished = unfinished_erasures(deployment.state, deployment.now - UNFINISHED_ERASURE_LIMIT)
    if result.ok and unfinished:
        return failed(f"{unfinished} erasure(s) started over a day ago are unfinished: restart the server or run "
                      "the same erasure again to finish them", *result.evidence)  # fmt: skip
    return (passed if result.ok else failed)(result.reason, *result.evidence)


def check_pii_redaction(deployment: Deployment) -> Verdict:
    from evals.pii_probe import PII_PROBE, measure_redaction, read_probe

    try:
        probe = measure_redaction(read_probe(PII_PROBE))
    except (OSError, ValueError) as exc:
        return failed(f"the PII probe set cannot be read: {exc}")
    safety, traces = deployment.settings.safety, deployment.settings.traces
    evidence = [f"probe: {PII_PROBE.name}, {probe.lines} synthetic lines"]
    evidence += [f"{k.kind}: {k.redacted}/{k.values} redacted" for k in probe.kinds if k.covered]
    if probe.missed:
        evidence.append(f"missed: {', '.join(probe.missed)}")
    evidence += [
        f"{WARNING}not covered by safety.pii: {k.kind}, {k.redacted}/{k.values} redacted (such values in "
        "documents and answers are left as they are)"
        for k in probe.kinds
        if not k.covered
    ]
    evidence.append(
        f"benign lines altered: {len(probe.benign_altered)}/{probe.benign_lines} "
        f"({', '.join(probe.benign_altered) or 'none'})"
    )
    evidence.append(
        f"redaction in force: retrieved text {safety.redact_retrieved}, traces {traces.trace_redact}, "
        f"audit content {deployment.settings.audit_content}"
    )
    figures = (
        f"recall {probe.recall:.1%} on {probe.covered_values} values (min {PII_RECALL_MIN:.0%}), benign "
        f"altered {probe.benign_altered_rate:.1%} (max {PII_BENIGN_ALTERED_MAX:.0%})"
    )
    if probe.recall < PII_RECALL_MIN or probe.benign_altered_rate > PII_BENIGN_ALTERED_MAX:
        return failed(figures, *evidence)
    return passed(figures, *evidence)


def check_injection_detection(deployment: Deployment) -> Verdict:
    from evals.injection_rates import attack_detection, held_out_false_positives
    from safety.guards import POLICIES_DIR, load_injection_settings
    from safety.injection import PatternDetector

    safety = deployment.settings.safety
    if not safety.guards:
        return failed("guards are off (guards=false): no document or passage is screened for injected instructions")
    started = time.perf_counter()
    policies = safety.policies_dir or POLICIES_DIR
    detector = PatternDetector(load_injection_settings(policies).passage_patterns)
    attacks = attack_detection(detector, "heldout")
    benign = held_out_false_positives(detector)
    evidence = [f"policies: {policies}", f"held-out attacks flagged: {attacks.flagged_count}/{attacks.documents}"]
    evidence += [f"  {family}: {share}" for family, share in attacks.by_family.items()]
    evidence += [f"benign passages flagged, {s.name}: {s.flagged}/{s.passages}" for s in benign.sets]
    evidence.append(f"measured in {time.perf_counter() - started:.1f} s")
    figures = (
        f"detection {attacks.flagged:.1%} (min {INJECTION_DETECTION_MIN:.0%}), false positives "
        f"{benign.rate:.3%} of {benign.passages} passages (max {INJECTION_FALSE_POSITIVES_MAX:.1%})"
    )
    if attacks.flagged < INJECTION_DETECTION_MIN or benign.rate > INJECTION_FALSE_POSITIVES_MAX:
        return failed(figures, *evidence)
    return passed(figures, *evidence)


def newest_backup(folder: Path) -> Path | None:
    archives = [path for path in folder.glob(BACKUP_PATTERN) if path.is_file()]
    return max(archives, key=lambda path: path.stat().st_mtime_ns) if archives else None


def check_backups(deployment: Deployment) -> Verdict:
    from app.cli.backup import dry_run_restore

    settings = deployment.settings
    folder, max_days = settings.backup.dir, settings.backup.max_age_days
    if folder is None:
        return not_applicable(
            "no backup_dir is set: backups are not checked",
            f"{WARNING}set backup_dir to where `ragops backup create` writes (as {BACKUP_PATTERN})",
        )
    if not folder.is_dir():
        return failed(f"the backup dir {folder} does not exist")
    newest = newest_backup(folder)
    if newest is None:
        return failed(f"no backup ({BACKUP_PATTERN}) in {folder}")
    evidence = [
        f"backup dir: {folder} ({len(list(folder.glob(BACKUP_PATTERN)))} archives)",
        f"newest: {newest.name}, {newest.stat().st_size:,} bytes",
    ]
    try:
        manifest = dry_run_restore(newest, settings)
    except CliError as exc:
        return failed(f"the newest backup {newest.name} would not restore: {exc}", *evidence)
    age_days = (deployment.now - parse_stamp(manifest.created)).total_seconds() / 86400
    evidence.append(f"made at {manifest.created} ({age_days:.1f} days ago); holds the state store: {manifest.state}")
    evidence.append("dry-run restore: manifest, index snapshot, state store integrity and schema pass")
    if age_days > max_days:
        return failed(f"the newest backup is {age_days:.1f} days old (backup_max_age_days {max_days:g})", *evidence)
    return passed(f"the newest backup is {age_days:.1f} days old and passes a dry-run restore", *evidence)


ERASURE = Control(
    id="erasure",
    title="Erasure self-test",
    checks="A planted user (two chats, a kept answer) and a planted document (a kept answer that shows it), "
    "erased on a scratch copy of the state store: the chain still verifies, the stores hold none of them, and the "
    "copy's bytes on disk hold neither.",
    check=check_erasure,
)
PII_REDACTION = Control(
    id="pii-redaction",
    title="PII redaction measured",
    checks=f"safety.pii redacts at least {PII_RECALL_MIN:.0%} of the personal data values of the shipped probe "
    f"set (evals/datasets/pii_probe.jsonl) whole, and alters at most {PII_BENIGN_ALTERED_MAX:.0%} of its benign "
    "look-alike lines.",
    check=check_pii_redaction,
)
INJECTION_DETECTION = Control(
    id="injection-detection",
    title="Injection detection on the held-out set",
    checks=f"The passage screen flags at least {INJECTION_DETECTION_MIN:.0%} of the held-out planted attacks "
    f"(evals/datasets/injection) and at most {INJECTION_FALSE_POSITIVES_MAX:.1%} of held-out benign passages.",
    check=check_injection_detection,
)
BACKUPS = Control(
    id="backups",
    title="Backups present and restorable",
    checks="The newest archive in backup_dir is at most backup_max_age_days old and passes a dry-run restore "
    "(manifest, index snapshot, state store integrity and schema). NA when backup_dir is unset.",
    check=check_backups,
)
