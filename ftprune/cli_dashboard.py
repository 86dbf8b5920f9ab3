"""``ftprune dashboard``: serve the Streamlit dashboard (:mod:`dashboards.app`) over a
database, read-only.

Before anything starts, the host, the port and the database are checked: a malformed host,
a port out of range or already taken, a missing database or one at another schema revision
is one ``error:`` line and exit status 2. The server listens on 127.0.0.1 unless told
otherwise and runs until interrupted (Ctrl-C). It has no authentication: on any other
address it says so, since whoever reaches the address reads every run of the database.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from ftprune.cli_common import Db, user_errors

HOSTNAME = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*$")


def dashboard(
    db: Db = None,
    host: Annotated[
        str,
        typer.Option(
            help="Address to listen on. The dashboard has no authentication: 0.0.0.0 shows "
            "every run of the database to anyone who reaches this machine's port."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8501,
) -> None:
    """Browse runs, convergence, schedules, routers, tuning studies and evaluations.

    Only reads the database: it is never created, migrated or written, and a database at an
    older schema revision is refused (run `ftprune db upgrade`). Views refresh live while a
    search is running.
    """
    from storage import default_url, open_reader, redact

    url = db or default_url()
    with user_errors():
        check_address(host, port)
        open_reader(url).close()
    typer.echo(
        f"dashboard of {redact(url)} at http://{_url_host(host)}:{port} (Ctrl-C stops it)", err=True
    )
    if not is_loopback(host):
        typer.echo(
            f"warning: the dashboard has no authentication: anyone who reaches {host}:{port} "
            "reads every run in this database (to keep it private, serve on 127.0.0.1 and "
            f"tunnel: ssh -L {port}:127.0.0.1:{port} <this host>)",
            err=True,
        )
    raise typer.Exit(serve(url, host, port))


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def streamlit_command(host: str, port: int) -> list[str]:
    """The command line that serves :mod:`dashboards.app` on ``host:port``. It holds no
    database URL (the app reads ``$FTPRUNE_DB``, see :func:`serve`): command lines are
    visible to every user of the machine, and a URL may hold a password."""
    import dashboards

    app = Path(dashboards.__file__).resolve().parent / "app.py"
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "viewer",
    ]


def serve(url: str, host: str, port: int) -> int:
    """Run the Streamlit server over ``url`` (passed in its environment as ``$FTPRUNE_DB``)
    until it exits or this process is stopped; its exit status.

    The server never outlives this process: Ctrl-C (SIGINT, which the server gets too) and
    SIGTERM (``kill``, a supervisor's stop, forwarded to it) stop it and return 0 and 143;
    if this process dies without a word (SIGKILL), the kernel sends the server SIGTERM
    (Linux's parent-death signal)."""
    from search.interrupts import Interruptible, Terminated

    process = subprocess.Popen(
        streamlit_command(host, port),
        env={**os.environ, "FTPRUNE_DB": url},
        preexec_fn=_die_with_parent,
    )
    try:
        with Interruptible():
            return process.wait()
    except KeyboardInterrupt:  # the server got the same SIGINT and shuts down
        _stop(process, signal.SIGINT)
        return 0
    except Terminated:
        _stop(process, signal.SIGTERM)
        return 128 + signal.SIGTERM


def _stop(process: subprocess.Popen[bytes], signum: int) -> None:
    """Send ``signum`` to the server (again: harmless), wait 10 s, then kill it."""
    if process.poll() is None:
        process.send_signal(signum)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _die_with_parent() -> None:
    """In the server's process, before it runs: SIGTERM when its parent dies (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def check_address(host: str, port: int) -> None:
    """Raise ConfigError unless ``host`` is an IP address or host name and ``port`` can be
    listened on there now."""
    from search.config import ConfigError

    if not 1 <= port <= 65535:
        raise ConfigError(f"--port must lie in 1..65535, got {port}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not HOSTNAME.match(host):
            raise ConfigError(
                f"--host must be an IP address or a host name, got {host!r}"
            ) from None
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
            probe.bind((host, port))
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
