"""The compliance report as one self-contained HTML page an auditor can read (like the eval report: no script,
no style or font fetched from anywhere; every value escaped)."""

from __future__ import annotations

from pathlib import Path

from app.compliance.model import ComplianceReport
from evals.report import html_templates


def render_html(report: ComplianceReport) -> str:
    return (
        html_templates("app.compliance").get_template("compliance.html").render(report=report, counts=report.counts())
    )


def write_html(path: Path, report: ComplianceReport) -> Path:
    path.write_text(render_html(report), encoding="utf-8")
    return path
