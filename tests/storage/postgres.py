"""A throwaway PostgreSQL server for the storage tests.

``initdb`` into a fresh temporary directory, listen only on 127.0.0.1 at a free port, and
delete everything on :meth:`PostgresServer.stop`; :meth:`PostgresServer.halt` and
:meth:`PostgresServer.start` stop and start it again on the same port and data directory (a
restarted database, for the fault tests). The server binaries are looked up on PATH,
then in Debian's ``/usr/lib/postgresql/<version>/bin`` (newest first). PostgreSQL refuses to
run as root, so under root the server runs as ``nobody`` (through ``runuser``) in a directory
owned by that user. Connections from 127.0.0.1 as ``postgres`` are trusted; every other role
authenticates with a password (scram-sha-256).
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
HBA = """\
local all all trust
host all postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
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

    def url(
        self, database: str = "postgres", user: str = "postgres", password: str | None = None
    ) -> str:
        secret = f":{quote(password, safe='')}" if password else ""
        return f"postgresql+psycopg://{user}{secret}@127.0.0.1:{self.port}/{database}"

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
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
        subprocess.run(
            [*self.as_user, self.pg_ctl, "-D", str(self.root / "data"), "-m", "fast", "-w", "stop"],
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
        options = f"-F -h 127.0.0.1 -p {self.port} -k {self.root} -c max_connections=200"
        return subprocess.run(
            [
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


def start_server(attempts: int = 3) -> PostgresServer:
    """Initialize and start a server; raises :class:`PostgresUnavailable` with the reason."""
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
    (data / "pg_hba.conf").write_text(HBA)
    for _ in range(attempts):
        server = PostgresServer(root, _free_port(), pg_ctl, as_user)
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
