"""Secrets in a text (keys, tokens, passwords), found by detect-secrets' plugins and filters, scanned in memory.

The Hub's ``secrets_present`` validator (guardrails-ai-secrets-present) writes each text to a temp file and scans it
inside ``detect_secrets.settings.default_settings()``. That context manager switches detect-secrets' one
process-wide settings object to "every plugin" and back to "none" around each call, so two requests checked at
once can switch the plugins off under each other's scan: four threads scanning a question that holds an AWS key
let it through 1 time in 400 (tests/test_secret_scan.py makes the race likely and counts none here). Rebuilding the
plugins on every switch was also most of the call's cost.

``SecretScanner`` enters those settings once, when it is built, and never leaves them: every scan then reads the
same plugins. A text is scanned as ``detect_secrets.core.scan.scan_file`` scans a ``.txt`` file, from memory: its
lines through the line scanner (``_process_line_based_plugins``, private: detect-secrets is pinned in
constraints.txt, and the agreement test compares the Hub's validator on every run), then, when that finds nothing,
the lines its eager transformers read from it. What it finds and how it masks them are the Hub validator's.
"""

from __future__ import annotations

import io
import threading
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

    def find(self, text: str) -> tuple[dict[str, list[int]], list[str]]:
        """The secrets found, each with the (1-based) lines it is on, and the text's lines."""
        from detect_secrets.core.scan import _process_line_based_plugins
        from detect_secrets.transformers import get_transformed_file

        lines = io.StringIO(text, newline=None).readlines()  # as a text file reads back: universal newlines
        found = list(_process_line_based_plugins(list(enumerate(lines, start=1)), SCANNED_NAME))
        if not found:
            named = _NamedText(text)
            eager = get_transformed_file(named, use_eager_transformers=True)  # type: ignore[arg-type]
            if eager:
                found = list(_process_line_based_plugins(list(enumerate(eager, start=1)), SCANNED_NAME))
        secrets: dict[str, list[int]] = {}
        for secret in found:
            if secret.secret_value is None:  # a finding read back from a baseline file; never from a scan
                continue
            places = secrets.setdefault(secret.secret_value, [])
            if secret.line_number not in places:
                places.append(secret.line_number)
        return secrets, lines


class _NamedText(io.StringIO):
    """The text as the open file detect-secrets' transformers read (they look at its name)."""

    def __init__(self, text: str) -> None:
        super().__init__(text, newline=None)
        self.name = SCANNED_NAME


@register_validator(name="ragops/secrets_present", data_type="string")
class SecretsPresent(Validator):
    """The Hub's ``secrets_present`` decision and fix (each secret masked on its lines), thread-safe and without a
    temp file. Like the Hub's, a text without a line break is scanned as one line ending in one."""

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
        for secret, line_numbers in secrets.items():
            for number in line_numbers:
                lines[number - 1] = lines[number - 1].replace(secret, MASK)
        return FailResult(
            error_message="The following secrets were detected in your response:\n" + "\n".join(secrets),
            fix_value="".join(lines),
        )
