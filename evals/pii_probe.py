"""How much of the personal data in a text ``safety.pii`` redacts, and how often it alters text that holds none:
measured on the shipped probe set ``evals/datasets/pii_probe.jsonl`` (synthetic: reserved example domains,
fictional phone ranges, documentation IBANs and test card numbers; no real person).

Each line is ``{"id", "text", "pii": [{"kind", "value"}], "lookalike"?}``. A value counts as redacted when the
findings of ``find_pii`` (what ``redact`` replaces) cover every character of it: a value half redacted still
leaks. A benign line (no ``pii``) is altered when ``redact`` changes it. Recall is reported over the kinds
``safety.pii`` detects (``PII_KINDS``); values of other kinds (postal addresses) are counted apart, as what it
does not cover.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, Field

from safety.pii import PII_KINDS, Finding, find_pii, redact

PII_PROBE = Path(__file__).resolve().parent / "datasets" / "pii_probe.jsonl"


class ProbeValue(BaseModel):
    kind: str
    value: str


class ProbeLine(BaseModel):
    id: str
    text: str
    pii: list[ProbeValue] = Field(default_factory=list)
    lookalike: str | None = Field(None, description="What a benign line resembles (a version number, an ISBN).")


class KindRecall(BaseModel):
    kind: str
    values: int
    redacted: int
    covered: bool = Field(description="Whether safety.pii detects this kind at all.")


class RedactionProbe(BaseModel):
    """What ``redact`` did to the probe set."""

    lines: int
    kinds: list[KindRecall]
    missed: list[str] = Field(description="'<line id>: <kind>' of each covered value left (partly) in the text.")
    benign_lines: int
    benign_altered: list[str] = Field(description="Ids of the benign lines redact changed.")

    @property
    def covered_values(self) -> int:
        return sum(k.values for k in self.kinds if k.covered)

    @property
    def recall(self) -> float:
        """Share of the values of covered kinds that were redacted whole."""
        found = sum(k.redacted for k in self.kinds if k.covered)
        return found / self.covered_values if self.covered_values else 0.0

    @property
    def benign_altered_rate(self) -> float:
        return len(self.benign_altered) / self.benign_lines if self.benign_lines else 0.0


def read_probe(path: Path = PII_PROBE) -> list[ProbeLine]:
    """The probe lines; ``ValueError`` for a line that is not one, or a value not in its text."""
    lines = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if raw.strip():
            line = ProbeLine.model_validate(json.loads(raw))
            if missing := [v.value for v in line.pii if v.value not in line.text]:
                raise ValueError(f"{path}:{number}: {missing[0]!r} is not in the line's text")
            lines.append(line)
    return lines


def is_covered(value_start: int, value_end: int, findings: list[Finding]) -> bool:
    """Every character of ``[value_start, value_end)`` lies in some finding."""
    return all(any(f.start <= at < f.end for f in findings) for at in range(value_start, value_end))


def measure_redaction(lines: list[ProbeLine]) -> RedactionProbe:
    counts: dict[str, list[int]] = {}  # kind -> [values, redacted]
    missed, benign, altered = [], 0, []
    for line in lines:
        if not line.pii:
            benign += 1
            if redact(line.text) != line.text:
                altered.append(line.id)
            continue
        findings = find_pii(line.text)
        for value in line.pii:
            start = line.text.index(value.value)
            redacted = is_covered(start, start + len(value.value), findings)
            tally = counts.setdefault(value.kind, [0, 0])
            tally[0], tally[1] = tally[0] + 1, tally[1] + redacted
            if not redacted and value.kind in PII_KINDS:
                missed.append(f"{line.id}: {value.kind}")
    kinds = [
        KindRecall(kind=kind, values=values, redacted=redacted, covered=kind in PII_KINDS)
        for kind, (values, redacted) in sorted(counts.items())
    ]
    return RedactionProbe(lines=len(lines), kinds=kinds, missed=missed, benign_lines=benign, benign_altered=altered)
