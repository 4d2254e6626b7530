"""A real headless Chromium (Debian's `chromium`, `make browser`) driven by Playwright for Python, against a
real service process on the tiny fixture model. Without the browser these tests skip with the reason;
with REQUIRE_BROWSER=1 (CI) they fail instead."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from scripts.playground_screenshot import CHROMIUM_FLAGS, find_chromium
from tests.service.test_server import start, stop


def _unavailable(reason: str) -> None:
    if os.environ.get("REQUIRE_BROWSER") == "1":
        pytest.fail(f"REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium() -> str:
    try:
        path = find_chromium()
    except LookupError as exc:
        _unavailable(str(exc))
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("Playwright for Python is not installed (the dev extra: make install)")
    return path


@pytest.fixture(scope="session")
def browser(chromium: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        yield b
        b.close()


@pytest.fixture(scope="session")
def server(models_root: Path) -> Iterator[str]:
    """The service on the tiny model (4, 8, 16 px), without API keys."""
    proc, url = start(models_root, [sys.executable, "-m", "service"], FACES_MAX_N="8")
    yield url
    stop(proc)


@pytest.fixture(scope="session")
def keyed_server(models_root: Path) -> Iterator[str]:
    """The same with FACES_API_KEYS set."""
    proc, url = start(models_root, [sys.executable, "-m", "service"], FACES_API_KEYS="right-key")
    yield url
    stop(proc)


@dataclass
class Tab:
    """A page in a fresh browser context (empty local storage), with what it logged and requested."""

    page: Any
    base: str
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def open(self) -> None:
        """Load the playground and wait for its first face (or its first error)."""
        self.page.goto(self.base + "/")
        self.page.wait_for_selector("body[data-ready=true]")

    def foreign_requests(self) -> list[str]:
        own = urlsplit(self.base).netloc
        return [
            u
            for u in self.requests
            if urlsplit(u).scheme not in ("blob", "data") and urlsplit(u).netloc != own
        ]


def _tab(browser: Any, base: str, **context: Any) -> Iterator[Tab]:
    ctx = browser.new_context(**context)
    page = ctx.new_page()
    page.set_default_timeout(30_000)
    tab = Tab(page, base)
    page.on("console", lambda m: tab.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: tab.console_errors.append(f"uncaught: {e}"))
    page.on("request", lambda r: tab.requests.append(r.url))
    yield tab
    ctx.close()


@pytest.fixture
def tab(browser: Any, server: str) -> Iterator[Tab]:
    yield from _tab(browser, server, viewport={"width": 1100, "height": 1000}, accept_downloads=True)


@pytest.fixture
def keyed_tab(browser: Any, keyed_server: str) -> Iterator[Tab]:
    yield from _tab(browser, keyed_server, viewport={"width": 1100, "height": 1000})
