"""A throwaway PostgreSQL server for the storage tests.

``initdb`` into a fresh temporary directory, listen only on 127.0.0.1 at a free port (or on
the address and port given, with the server's commands behind a prefix such as ``ip netns exec
NAME``), and delete everything on :meth:`PostgresServer.stop`; :meth:`PostgresServer.halt` and
:meth:`PostgresServer.start` stop and start it again on the same port and data directory (a
restarted database, for the fault tests). The server binaries are looked up on PATH,
then in Debian's ``/usr/lib/postgresql/<version>/bin`` (newest first). PostgreSQL refuses to
run as root, so under root the server runs as ``nobody`` (through ``runuser``) in a directory
owned by that user. Connections through the server's Unix socket (in its directory, which
:meth:`PostgresServer.admin` and :meth:`PostgresServer.socket_url` use) and, on 127.0.0.1, as
``postgres`` are trusted; every other connection authenticates with a password
(scram-sha-256), from 127.0.0.1 or, on another address, from the subnets the server is on.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

SERVER_USER = "nobody"
LOOPBACK = "127.0.0.1"
HBA = """\
local all all trust
host all postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
"""
HBA_SUBNETS = """\
local all all trust
host all all samenet scram-sha-256
"""


class PostgresUnavailable(RuntimeError):
    """PostgreSQL could not be found or started; the message says why."""


def find_binaries() -> tuple[str, str]:
    """Paths of ``initdb`` and ``pg_ctl``: from PATH, else the newest Debian server package."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return initdb, pg_ctl
    dirs = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda d: [int(n) for n in re.findall(r"\d+", d.parent.name)],
        reverse=True,
    )
    for directory in dirs:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return str(directory / "initdb"), str(directory / "pg_ctl")
    raise PostgresUnavailable(
        "no initdb/pg_ctl on PATH or in /usr/lib/postgresql/*/bin "
        "(install Debian's postgresql package: make system-deps)"
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class PostgresServer:
    """A running server; :meth:`url` names a database on it."""

    root: Path
    port: int
    pg_ctl: str
    as_user: list[str]
    host: str = LOOPBACK
    prefix: tuple[str, ...] = ()  # runs the server's commands (e.g. in a network namespace)

    def url(
        self, database: str = "postgres", user: str = "postgres", password: str | None = None
    ) -> str:
        secret = f":{quote(password, safe='')}" if password else ""
        return f"postgresql+psycopg://{user}{secret}@{self.host}:{self.port}/{database}"

    def socket_url(self, database: str, user: str, password: str | None = None) -> str:
        """Like :meth:`url`, through the server's Unix socket: reachable from this machine
        wherever the server's address is (a socket file crosses network namespaces)."""
        secret = f":{quote(password, safe='')}" if password else ""
        socket_dir = quote(str(self.root), safe="")
        return f"postgresql+psycopg://{user}{secret}@/{database}?host={socket_dir}&port={self.port}"

    def admin(self) -> psycopg.Connection:
        """A connection as ``postgres`` through the Unix socket (trusted)."""
        return psycopg.connect(
            host=str(self.root), port=self.port, user="postgres", dbname="postgres", autocommit=True
        )

    def create_database(self, name: str, owner: str = "postgres") -> None:
        with self.admin() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(name), sql.Identifier(owner)
                )
            )

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def create_role(self, name: str, password: str) -> None:
        with self.admin() as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(name), sql.Literal(password)
                )
            )

    def halt(self) -> None:
        """Stop the server (fast shutdown: open connections are cut), keeping its data."""
        stop = [self.pg_ctl, "-D", str(self.root / "data"), "-m", "fast", "-w", "stop"]
        subprocess.run(
            [*self.prefix, *self.as_user, *stop],
            cwd=self.root,
            capture_output=True,
            check=False,
        )

    def start(self) -> None:
        """Start the (halted) server again on its port; raises :class:`PostgresUnavailable`."""
        started = self._pg_ctl_start()
        if started.returncode != 0:
            raise PostgresUnavailable(f"pg_ctl start failed: {self._log_tail(started)}")

    def restart(self) -> None:
        self.halt()
        self.start()

    def stop(self) -> None:
        self.halt()
        shutil.rmtree(self.root, ignore_errors=True)

    def _pg_ctl_start(self) -> subprocess.CompletedProcess[str]:
        options = f"-F -h {self.host} -p {self.port} -k {self.root} -c max_connections=200"
        return subprocess.run(
            [
                *self.prefix,
                *self.as_user,
                self.pg_ctl,
                "-D",
                str(self.root / "data"),
                "-l",
                str(self.root / "server.log"),
                "-w",
                "-t",
                "60",
                "-o",
                options,
                "start",
            ],
            cwd=self.root,
            capture_output=True,
            text=True,
        )

    def _log_tail(self, started: subprocess.CompletedProcess[str]) -> str:
        log = self.root / "server.log"
        text = log.read_text(errors="replace") if log.exists() else started.stderr
        return text[-500:].strip()


def start_server(
    attempts: int = 3,
    host: str = LOOPBACK,
    port: int | None = None,
    prefix: tuple[str, ...] = (),
) -> PostgresServer:
    """Initialize and start a server listening on ``host`` only, at ``port`` (default: a free
    loopback port, tried ``attempts`` times), its commands run behind ``prefix``; raises
    :class:`PostgresUnavailable` with the reason."""
    initdb, pg_ctl = find_binaries()
    root = Path(tempfile.mkdtemp(prefix="ftprune-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        if not shutil.which("runuser"):
            raise PostgresUnavailable("running as root and no runuser to drop privileges")
        user = pwd.getpwnam(SERVER_USER)
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", SERVER_USER, "--"]
    data = root / "data"
    _run(
        [
            *as_user,
            initdb,
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-locale",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        root,
        "initdb",
    )
    (data / "pg_hba.conf").write_text(HBA if host == LOOPBACK else HBA_SUBNETS)
    for _ in range(attempts):
        server = PostgresServer(root, port or _free_port(), pg_ctl, as_user, host, prefix)
        started = server._pg_ctl_start()
        if started.returncode == 0:
            return server
    log = server._log_tail(started)
    shutil.rmtree(root, ignore_errors=True)
    raise PostgresUnavailable(f"pg_ctl start failed: {log}")


def _run(command: list[str], cwd: Path, what: str) -> None:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(cwd, ignore_errors=True)
        raise PostgresUnavailable(f"{what} failed: {(done.stderr or done.stdout).strip()[-500:]}")
