"""Headless Chromium (Debian's, installed by ``make browser``) for the page tests, with nothing fetched."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def asked_on_the_page(url: str, question: str) -> Iterator[tuple[Any, list[str]]]:
    """The chat page at ``url`` once ``question`` was sent and its answer is done: the page, and the script errors
    it raised (collected until the browser closes)."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page()
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url + "/")
            page.fill("#question", question)
            page.click("#send")
            page.wait_for_selector("body[data-state=done]", timeout=60_000)
            yield page, errors
        finally:
            browser.close()
