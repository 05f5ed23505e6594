"""Browser-test fixtures: a real `fakelens serve` (API keys on, small upload limit) and Chromium.

The tests skip, saying why, only when Playwright or a Chromium binary is missing; `make test`
installs Debian's chromium first when it runs as root. A failing test leaves a screenshot
of the page in test-artifacts/browser/.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from models.core.checkpoint import save_model_dir
from models.core.network import build_network
from tests.browser.chromium import find_chromium, launch
from tests.conftest import tiny_config
from tests.serve_helpers import serving

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "browser"
KEY = "page-test-key"
MAX_BYTES = 200_000  # small, so a test can provoke a real 413
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"report_{report.when}", report)  # read by the page fixtures' teardown
    return report


@pytest.fixture(scope="session")
def page_server(tmp_path_factory):
    """`fakelens serve` on loopback with a tiny random-weight model that has an uncertain band."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(tiny_config(), uncertain_band=(0.45, 0.55), name="tiny-vit")
    model = tmp_path_factory.mktemp("page_model")
    save_model_dir(model, build_network(cfg), cfg)
    env = {"FAKELENS_API_KEYS": KEY, "FAKELENS_MAX_BYTES": str(MAX_BYTES)}
    with serving(model, tmp_path_factory.mktemp("page_serve"), env) as url:
        yield url


@pytest.fixture(scope="session")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright is not installed: pip install -e '.[dev]'")
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium found (/usr/bin/chromium, PATH or FAKELENS_CHROMIUM): install it with "
                    "`apt-get install chromium`; `make test` does so when it runs as root")
    with sync_api.sync_playwright() as p:
        b = launch(p, executable)
        yield b
        b.close()


def open_page(browser, url: str, request, viewport=DESKTOP, **context_kw):
    """A fresh browser context on the page; fails the test on an uncaught JavaScript error or a
    Content-Security-Policy violation (something the page tried to load from elsewhere)."""
    context = browser.new_context(viewport=viewport, accept_downloads=True, **context_kw)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready='1']")
    try:
        yield page
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / f"{request.node.name}.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot of the failing page: {shot}")
    finally:
        context.close()
    assert not errors, f"JavaScript errors or CSP violations on the page: {errors}"


@pytest.fixture
def page(browser, page_server, request):
    yield from open_page(browser, page_server, request)


@pytest.fixture
def phone(browser, page_server, request):
    yield from open_page(browser, page_server, request, viewport=PHONE, is_mobile=True, has_touch=True)
