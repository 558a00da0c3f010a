"""End-to-end fixtures: the real server on a free port, one Chromium and one context per session.

Chromium is Debian's (/usr/bin/chromium), driven by Playwright's sync API; the tests skip with a
clear reason when it is missing. Console errors and CSP violations are collected per page.
"""
from __future__ import annotations

import os
import subprocess

import pytest

from e2e_helpers import CHROMIUM, launch_chromium, start_server


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/e2e/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def server_url():
    url, process = start_server()
    yield url
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="session")
def browser_context():
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install -y --no-install-recommends chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        context = browser.new_context(viewport={"width": 1500, "height": 1100}, accept_downloads=True)
        yield context
        context.close()
        browser.close()


class PageErrors(list):
    """Console errors, page errors and CSP violations seen by one page."""


@pytest.fixture()
def lab(browser_context, server_url):
    """A fresh page of the session's context, with .errors and .base (the server URL)."""
    page = browser_context.new_page()
    errors = PageErrors()
    page.on("console", lambda msg: errors.append(f"console.{msg.type}: {msg.text}") if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    # CSP violations fire a DOM event; count them as errors.
    page.add_init_script("document.addEventListener('securitypolicyviolation', e => "
                         "console.error('CSP violation: ' + e.violatedDirective + ' ' + e.blockedURI));")
    page.errors = errors
    page.base = server_url
    yield page
    page.close()
