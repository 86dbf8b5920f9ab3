"""The dashboard in a real browser: ``ftprune dashboard`` on a free loopback port, opened in
Debian's headless Chromium (Playwright drives it; no browser is downloaded). Without
Chromium the test is skipped with the reason, and fails when CI=true."""

from __future__ import annotations

import hashlib
import re

import pytest

from tests.dashboards.browser import CHROMIUM, dashboard_server, screenshot
from tests.storage.conftest import in_ci


@pytest.fixture
def chromium() -> None:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} not found: install it with `sh scripts/ensure-chromium.sh`"
        if in_ci():
            pytest.fail(f"Chromium is required in CI: {reason}", pytrace=False)
        pytest.skip(reason)


def test_the_dashboard_shows_the_run_and_its_charts_in_chromium(chromium, filled, tmp_path):
    before = hashlib.sha256(filled.path.read_bytes()).digest()
    shot = tmp_path / "dashboard.png"
    with dashboard_server(filled.url) as base:
        assert base.startswith("http://127.0.0.1:")
        text = screenshot(base, shot, run="tiny (finished)", charts=3)
    assert re.search(r"Overview\s+run\s+tiny\s+status\s+finished", text), text[:500]
    assert "Final schedule per block" in text and "best so far" in text  # a chart's legend
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert hashlib.sha256(filled.path.read_bytes()).digest() == before
