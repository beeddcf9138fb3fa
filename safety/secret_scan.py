"""Secrets in a text (keys, tokens, passwords), found by detect-secrets' plugins and filters, scanned in memory.

The Hub's ``secrets_present`` validator (guardrails-ai-secrets-present) writes each text to a temp file and scans it
inside ``detect_secrets.settings.default_settings()``. That context manager switches detect-secrets' one
process-wide settings object to "every plugin" and back to "none" around each call, so two requests checked at
once can switch the plugins off under each other's scan: four threads scanning a question that holds an AWS key
let it through 1 time in 400 (tests/test_secret_scan.py makes the race likely and counts none here). Rebuilding the
plugins on every switch was also most of the call's cost.

``SecretScanner`` enters those settings once, when it is built, and never leaves them: every scan then reads the
same plugins. A text is scanned as ``detect_secrets.core.scan.scan_file`` scans a ``.txt`` file, from memory: as
its transformers read it (an ini-like text as its values), else its lines, through the line scanner
(``_process_line_based_plugins``, private: detect-secrets is pinned in constraints.txt, and the agreement test
compares the Hub's validator on every run), then, when that finds nothing, as its eager transformers read it.
What it finds is what the Hub validator finds; it masks each secret everywhere in the text, where the Hub's masks
it only on the line of its first finding.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from typing import Any

from guardrails.validator_base import FailResult, PassResult, ValidationResult, Validator, register_validator

MASK = "********"
SCANNED_NAME = "text.txt"  # the name detect-secrets' filename filters see: a plain text file, as the Hub's temp file


class SecretScanner:
    """detect-secrets with every plugin and its default filters, entered once for the process."""

    _entered = threading.Lock()  # two scanners built at once enter the settings one after the other

    def __init__(self) -> None:
        from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
        from detect_secrets.settings import cache_bust, configure_settings_from_baseline, get_settings

        plugins: list[type] = list(get_mapping_from_secret_type_to_class().values())
        every_plugin = [{"name": plugin.__name__} for plugin in plugins]
        with self._entered:
            if set(get_settings().plugins) != {p["name"] for p in every_plugin}:
                cache_bust()  # what default_settings() does on entry: fresh settings with the default filters
                configure_settings_from_baseline({"plugins_used": every_plugin})

    def find(self, text: str) -> tuple[list[str], list[str]]:
        """The secrets found, in the order detect-secrets reports them, and the text's lines."""
        from detect_secrets.core.scan import _process_line_based_plugins

        lines = io.StringIO(text, newline=None).readlines()  # as a text file reads back: universal newlines
        found: dict[Any, None] = {}  # detect-secrets' set: one finding per (secret, type), its first kept
        for reading in _readings(text, lines):
            for secret in _process_line_based_plugins(list(enumerate(reading, start=1)), SCANNED_NAME):
                found.setdefault(secret)
            if found:
                break
        ordered = sorted(found, key=lambda s: (s.line_number, s.secret_hash, s.type))  # SecretsCollection's order
        # secret_value is None only for a finding read back from a baseline file, never from a scan.
        secrets = dict.fromkeys(s.secret_value for s in ordered if s.secret_value is not None)
        return list(secrets), lines


def _readings(text: str, lines: list[str]) -> Iterator[list[str]]:
    """The text as ``scan_file`` reads a file: as its transformers parse it (an ini-like text as its values), else
    as its lines; then, for a caller that found nothing in those, as its eager transformers parse it."""
    from detect_secrets.transformers import get_transformed_file

    yield get_transformed_file(_NamedText(text)) or lines  # type: ignore[arg-type]
    eager = get_transformed_file(_NamedText(text), use_eager_transformers=True)  # type: ignore[arg-type]
    if eager:
        yield eager


class _NamedText(io.StringIO):
    """The text as the open file detect-secrets' transformers read (they look at its name)."""

    def __init__(self, text: str) -> None:
        super().__init__(text, newline=None)
        self.name = SCANNED_NAME


@register_validator(name="ragops/secrets_present", data_type="string")
class SecretsPresent(Validator):
    """The Hub's ``secrets_present`` decision and message, each secret masked wherever it is, thread-safe and
    without a temp file. Like the Hub's, a text without a line break is scanned as one line ending in one."""

    def __init__(self, on_fail: Any = None, **kwargs: Any) -> None:
        super().__init__(on_fail=on_fail, **kwargs)
        self._scanner = SecretScanner()

    def validate(self, value: Any, metadata: dict[str, Any]) -> ValidationResult:
        text = str(value)
        if "\n" not in text:
            text += "\n"
        secrets, lines = self._scanner.find(text)
        if not secrets:
            return PassResult()
        masked = "".join(lines)
        for secret in secrets:  # everywhere (module docstring)
            masked = masked.replace(secret, MASK)
        return FailResult(
            error_message="The following secrets were detected in your response:\n" + "\n".join(secrets),
            fix_value=masked,
        )
