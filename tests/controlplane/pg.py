"""A throwaway PostgreSQL server for tests: `initdb` + `pg_ctl` on a free loopback port.

Reuse from another test folder with `from tests.controlplane.pg import postgres_server` (a pytest fixture,
session scope) or `PostgresServer.start()` directly. Skips with a printed reason when the server binaries
are missing. As root the server runs as the `postgres` OS user.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.skips import skip_missing

PG_BIN_DIRS = [Path(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)]
PG_USER = "postgres"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_bin_dir() -> Path | None:
    env = os.environ.get("WRENN_PG_BIN")
    candidates = [Path(env)] if env else PG_BIN_DIRS
    for candidate in candidates:
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    return None


@dataclass
class PostgresServer:
    bin_dir: Path
    root: Path
    port: int
    as_root: bool

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        """SQLAlchemy URL of `database` (as the control plane takes it: plain postgres URL)."""
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", PG_USER, "--", *cmd]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)

    @classmethod
    def start(cls, bin_dir: Path) -> PostgresServer:
        as_root = os.geteuid() == 0
        root = Path(tempfile.mkdtemp(prefix="wrenn-pg-"))
        if as_root:
            shutil.chown(root, user=PG_USER, group=PG_USER)
        server = cls(bin_dir=bin_dir, root=root, port=free_port(), as_root=as_root)
        data = root / "data"
        server._run("initdb", "-D", str(data), "-A", "trust", "-U", PG_USER, "--no-sync", "-E", "UTF8")
        options = (
            f"-p {server.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        )
        server._run(
            "pg_ctl", "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "-t", "60", "start"
        )
        return server

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, prefix: str = "wrenn_test") -> str:
        """A fresh, empty database; returns its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        cmd = [
            str(self.bin_dir / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            PG_USER,
            "-d",
            "postgres",
        ]
        if not (self.bin_dir / "psql").exists():
            cmd[0] = "psql"
        subprocess.run(
            [*cmd, "-qc", f'CREATE DATABASE "{name}"'], check=True, capture_output=True, timeout=60
        )
        return self.url(name)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        reason = "PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin"
        skip_missing("PostgreSQL", reason)
    server = PostgresServer.start(bin_dir)
    try:
        yield server
    finally:
        server.stop()
