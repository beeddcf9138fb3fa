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


AI_NOTICE = "Answers are written by an AI system"  # the page's transparency line (EU AI Act art. 50) opens so


def ai_notice(page: Any) -> str:
    """The page's line saying that an AI system writes the answers; asserted visible (not just present)."""
    assert page.locator("#ai-notice").is_visible()
    text = str(page.inner_text("#ai-notice"))
    assert AI_NOTICE in text and "Check them before you rely on an answer." in text, text
    return text


@contextmanager
def asked_on_the_page(url: str, question: str) -> Iterator[tuple[Any, list[str]]]:
    """The chat page at ``url`` once ``question`` was sent and its answer is done: the page, and the script errors
    it raised (collected until the browser closes). Before asking, the page must show that an AI system writes its
    answers (``ai_notice``): every page test checks it."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page()
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url + "/")
            ai_notice(page)
            page.fill("#question", question)
            page.click("#send")
            page.wait_for_selector("body[data-state=done]", timeout=60_000)
            yield page, errors
        finally:
            browser.close()
