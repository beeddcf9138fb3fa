"""Headless Chromium (Debian's, installed by ``make browser``) for the page tests, with nothing fetched."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

needs_chromium = pytest.mark.skipif(
    shutil.which("chromium") is None, reason="Debian chromium is not installed (make setup does it)"
)


def launch(playwright: Any) -> Any:
    return playwright.chromium.launch(
        executable_path=shutil.which("chromium"),
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
    )
