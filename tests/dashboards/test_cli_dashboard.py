"""``ftprune dashboard``: bad input and unusable databases are one line and exit 2 before
anything starts (and nothing is created); the server it starts is Streamlit on the app,
bound to the address asked for (127.0.0.1 by default), headless, without usage stats."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ftprune import cli_dashboard
from ftprune.cli import app
from tests.storage.test_reader import _database_behind

runner = CliRunner()


def _refused(args: list[str], expected: str) -> None:
    result = runner.invoke(app, ["dashboard", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines


def test_bad_host_port_or_database_is_one_line_and_exit_2(filled, tmp_path, monkeypatch):
    monkeypatch.setattr(cli_dashboard, "serve", lambda *a: pytest.fail("server started"))
    _refused(["--db", filled.url, "--port", "0"], "--port must lie in 1..65535")
    _refused(["--db", filled.url, "--port", "65536"], "--port must lie in 1..65535")
    _refused(["--db", filled.url, "--host", "not a host"], "--host must be an IP address")
    missing = tmp_path / "missing.db"
    _refused(["--db", f"sqlite:///{missing}"], "no database at")
    assert not missing.exists()
    _refused(["--db", "mysql://somewhere/db"], "unsupported database")
    stale = tmp_path / "stale.db"
    _database_behind(f"sqlite:///{stale}")
    _refused(["--db", f"sqlite:///{stale}"], "run `ftprune db upgrade`")


def test_a_port_in_use_is_refused_before_starting(filled, monkeypatch):
    monkeypatch.setattr(cli_dashboard, "serve", lambda *a: pytest.fail("server started"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        _refused(["--db", filled.url, "--port", str(port)], f"cannot listen on 127.0.0.1:{port}")


def test_it_serves_the_app_headless_on_loopback_by_default(filled, monkeypatch):
    started: list[list[str]] = []
    environments: list[dict[str, str]] = []

    class Server:
        def __init__(self, command: list[str], env: dict[str, str], **_options: object) -> None:
            started.append(command)
            environments.append(env)

        def wait(self, timeout: float | None = None) -> int:
            return 0

    monkeypatch.setattr(subprocess, "Popen", Server)
    result = runner.invoke(app, ["dashboard", "--db", filled.url, "--port", "8765"])
    assert result.exit_code == 0, result.output
    (command,) = started
    assert command[:4] == [sys.executable, "-m", "streamlit", "run"]
    assert command[4].endswith("dashboards/app.py")
    options = dict(zip(command[5::2], command[6::2], strict=True))
    assert options == {
        "--server.address": "127.0.0.1",
        "--server.port": "8765",
        "--server.headless": "true",
        "--browser.gatherUsageStats": "false",
        "--client.toolbarMode": "viewer",
    }
    assert environments == [{**os.environ, "FTPRUNE_DB": filled.url}]  # not in its argv
    assert "http://127.0.0.1:8765" in result.stderr
    assert "authentication" not in result.stderr


def test_a_network_address_is_served_with_a_warning_that_nothing_guards_it(filled, monkeypatch):
    monkeypatch.setattr(cli_dashboard, "serve", lambda url, host, port: 0)
    with socket.socket() as probe:
        probe.bind(("0.0.0.0", 0))
        port = probe.getsockname()[1]
    args = ["dashboard", "--db", filled.url, "--host", "0.0.0.0", "--port", str(port)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("dashboard of ")
    assert lines[1].startswith("warning: the dashboard has no authentication: anyone who")
    assert f"ssh -L {port}:127.0.0.1:{port}" in lines[1]
    assert [cli_dashboard.is_loopback(h) for h in ("127.0.0.1", "::1", "localhost")] == [True] * 3
    assert not any(cli_dashboard.is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "box"))


def test_the_pipeline_summary_ends_with_the_command_that_opens_its_dashboard(filled):
    # `ftprune demo` prints the same summary (ftprune.cli_pipeline.report)
    assert filled.pipeline_output.rstrip().splitlines()[-1] == (
        f"  ftprune dashboard --db {filled.pipeline_url}"
    )


def test_its_help_starts_without_heavy_imports():
    code = (
        "import sys; from ftprune.cli import main\n"
        "sys.argv = ['ftprune', 'dashboard', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print([m for m in ('streamlit', 'pandas', 'sqlalchemy', 'plotly', 'torch')"
        " if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Usage" in out.stdout and out.stdout.strip().splitlines()[-1] == "[]"


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_stops_the_server_with_the_dashboard(filled):
    """A supervisor's stop (SIGTERM to ``ftprune dashboard``) stops the Streamlit server
    too: nothing is left serving on the port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "ftprune.cli", "dashboard", "--db", filled.url]
    process = subprocess.Popen(
        [*command, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None and time.monotonic() < deadline, "no server"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        servers = _children(process.pid)
        assert servers and all(_alive(pid) for pid in servers)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 15
        while any(_alive(pid) for pid in servers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in servers)
        with socket.socket() as again:
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            again.bind(("127.0.0.1", port))  # free: nothing serves there any more
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
