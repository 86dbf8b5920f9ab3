"""Serve the dashboard with ``ftprune dashboard`` on a free loopback port and look at it in
Debian's headless Chromium, driven by Playwright (never a downloaded browser)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def dashboard_server(db_url: str, timeout_s: float = 60.0) -> Iterator[str]:
    """``ftprune dashboard --db DB_URL`` on a free port of 127.0.0.1; yields its base URL
    once Streamlit answers its health check, and stops the server (its whole process group)
    on exit."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ftprune.cli",
            "dashboard",
            "--db",
            db_url,
            "--host",
            HOST,
            "--port",
            str(port),
        ],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "STREAMLIT_SERVER_FILE_WATCHER_TYPE": "none"},
    )
    base = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"dashboard exited with {process.returncode}: "
                    f"{process.stderr.read().decode() if process.stderr else ''}"
                )
            try:
                with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"dashboard did not answer on {base} in {timeout_s:.0f} s")
            time.sleep(0.3)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if process.stderr:
            process.stderr.close()


def screenshot(
    base: str,
    out: Path,
    view: str | None = None,
    run: str | None = None,
    charts: int = 1,
    size: tuple[int, int] = (1400, 1000),
    timeout_ms: int = 60_000,
) -> str:
    """Open the dashboard at ``base`` in headless Chromium (fresh profile) with a window of
    ``size``, optionally pick a run and a view in the sidebar, wait until ``charts`` Plotly
    charts have drawn, save a screenshot of the window to ``out`` (Streamlit scrolls inside
    it: make the window tall enough) and return the page's visible text."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="chromium-") as profile, sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": size[0], "height": size[1]},
        )
        try:
            page = browser.new_page()
            page.goto(base, wait_until="domcontentloaded", timeout=timeout_ms)
            page.wait_for_selector("section[data-testid='stSidebar']", timeout=timeout_ms)
            if run is not None:
                page.locator("div[data-testid='stSelectbox']").first.click()
                page.get_by_role("option", name=run, exact=False).first.click()
            if view is not None:
                page.locator("section[data-testid='stSidebar']").get_by_text(
                    view, exact=True
                ).click()
            page.wait_for_function(
                f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {charts}",
                timeout=timeout_ms,
            )
            page.wait_for_timeout(1500)  # let the charts finish their first transition
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
            return page.inner_text("body")
        finally:
            browser.close()
