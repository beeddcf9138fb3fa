"""Personal data and secrets in text: detection with checksums where the format has one, and redaction.

Patterns find candidates; checks keep false positives down: a card number must pass Luhn, an IBAN the ISO 13616
mod-97 check, an IP address must parse, a US SSN must not use a never-issued area. Secrets (API keys, tokens,
private keys) come from known key formats here and from detect-secrets (``safety.secret_scan``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from retrieval.lru import Lru


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int
    end: int

    @property
    def placeholder(self) -> str:
        return f"[{self.kind.upper()}]"


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    iban = candidate.replace(" ", "").upper()
    if not 15 <= len(iban) <= 34:
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _card(match: re.Match[str]) -> bool:
    digits = re.sub(r"\D", "", match.group())
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def _ip(match: re.Match[str]) -> bool:
    try:
        ipaddress.ip_address(match.group())
    except ValueError:
        return False
    return True


def _ssn(match: re.Match[str]) -> bool:
    area, group, serial = match.group().split("-")
    return area not in {"000", "666"} and not area.startswith("9") and group != "00" and serial != "0000"


def _phone(match: re.Match[str]) -> bool:
    return 10 <= len(re.sub(r"\D", "", match.group())) <= 15  # 9 digits is an SSN shape, not a phone


PRIVATE_KEY_BEGIN = r"-----BEGIN [A-Z ]*PRIVATE KEY-----"  # the one secret that spans lines
PRIVATE_KEY_END = r"-----END [A-Z ]*PRIVATE KEY-----"

# ragops' own API keys (serving/governance/keys.py makes them): first, so no other pattern takes part of one and
# leaves the rest.
RAGOPS_API_KEY = re.compile(r"rgk_[A-Za-z0-9]{12}_[A-Za-z0-9_-]{8,100}")  # shorter than ours: still keep it out

# (kind, pattern, check). Order matters where spans overlap: the first finding wins.
_DETECTORS: list[tuple[str, re.Pattern[str], Callable[[re.Match[str]], bool] | None]] = [
    ("api_key", RAGOPS_API_KEY, None),
    ("secret", re.compile(rf"{PRIVATE_KEY_BEGIN}[\s\S]*?(?:{PRIVATE_KEY_END}|$)"), None),
    (
        "secret",
        re.compile(
            r"\b(?:sk-(?:proj-)?[A-Za-z0-9_-]{20,}|sk-ant-[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}"
            r"|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,}|xox[abprs]-[A-Za-z0-9-]{10,}"
            r"|AIza[0-9A-Za-z_-]{35}|lsv2_(?:pt|sk)_[A-Za-z0-9_]{20,}|hf_[A-Za-z0-9]{30,}"
            r"|eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,})"
        ),
        None,
    ),
    ("email", re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"), None),
    (
        "iban",
        re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"),
        lambda m: iban_valid(m.group()),
    ),
    ("credit_card", re.compile(r"\b\d(?:[ -]?\d){12,18}\b"), _card),
    ("us_ssn", re.compile(r"\b\d{3}-\d{2}-\d{4}\b"), _ssn),
    ("uk_nino", re.compile(r"\b[A-CEGHJ-PR-TW-Z]{2} ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b"), None),
    ("ip_address", re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b|\b(?:[0-9A-Fa-f]{1,4}:){2,7}[0-9A-Fa-f]{1,4}\b"), _ip),
    (
        "phone",
        re.compile(
            r"(?<![\w+])(?:\+\d{7,15}"  # E.164 written together: +14155550132
            r"|(?:\+\d{1,3}[ .-]?)?\(\d{1,4}\)[ .-]?\d{2,4}(?:[ .-]\d{2,4}){1,3}"  # (415) 555-0132
            r"|\+\d{1,3}[ .-]\d{1,4}(?:[ .-]\d{2,4}){2,5}"  # +33 1 42 68 53 00
            r"|\d{2,4}(?:[ .-]\d{2,4}){2,4})\b"  # 415-555-0199, 020 7946 0958
        ),
        _phone,
    ),
]

PII_KINDS = tuple(dict.fromkeys(kind for kind, _, _ in _DETECTORS))


def find_pii(text: str, kinds: Iterable[str] = PII_KINDS) -> list[Finding]:
    """Non-overlapping findings of the given kinds, in text order."""
    wanted = set(kinds)
    taken: list[Finding] = []
    for kind, pattern, check in _DETECTORS:
        if kind not in wanted:
            continue
        for match in pattern.finditer(text):
            if check is not None and not check(match):
                continue
            if any(match.start() < f.end and f.start < match.end() for f in taken):
                continue
            taken.append(Finding(kind, match.start(), match.end()))
    return sorted(taken, key=lambda f: f.start)


def redact(text: str, findings: list[Finding] | None = None) -> str:
    """``text`` with each finding replaced by its placeholder, e.g. ``[EMAIL]``."""
    for finding in sorted(findings if findings is not None else find_pii(text), key=lambda f: -f.start):
        text = text[: finding.start] + finding.placeholder + text[finding.end :]
    return text


class RedactionMemo:
    """``redact`` for texts that come back again and again, each redacted once: retrieved passages, which search
    hits and the answer log show redacted (the same few hundred passages answer question after question, and
    redacting them again was a seventh of a search's CPU). Bounded, least recently used first out."""

    def __init__(self, capacity: int = 2048) -> None:
        self._redacted: Lru[str, str] = Lru(capacity)

    def __call__(self, text: str) -> str:
        return self._redacted.get_or_make(text, lambda: redact(text))


def redact_values(value: Any) -> Any:
    """``value`` with every string in it redacted, through dicts and lists (logs and traces); other objects
    become redacted strings, numbers and None stay."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_values(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_values(v) for v in value]
    return value if isinstance(value, int | float | bool) or value is None else redact(str(value))
