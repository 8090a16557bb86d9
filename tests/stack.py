"""The whole platform as a user runs it: `wrenn up` in a subprocess, on SQLite or a real PostgreSQL (and
`start_wrenn`, how these tests start any `wrenn` command)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_wrenn(
    command: str, env: Mapping[str, str], stdout: IO[bytes], stderr: IO[bytes] | None = None
) -> subprocess.Popen[bytes]:
    """`wrenn <command>` as a user starts it, with `env` over our environment, in a session of its own (a
    signal to the session reaches everything it started); stderr goes with stdout unless given."""
    return subprocess.Popen(
        [sys.executable, "-m", "wrenn_server.cli", command],
        env={**os.environ, **env},
        stdout=stdout,
        stderr=stdout if stderr is None else stderr,
        start_new_session=True,
    )


@dataclass
class Stack:
    data_dir: Path
    database_url: str
    cp_port: int
    agent_port: int
    process: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env_file(self) -> Path:
        return self.data_dir / "env"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "up.log"

    def config(self) -> dict[str, str]:
        lines = self.env_file.read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)

    @property
    def base_url(self) -> str:
        return self.config()["WRENN_BASE_URL"]

    @property
    def api_key(self) -> str:
        return self.config()["WRENN_API_KEY"]

    def environment(self) -> dict[str, str]:
        """What `wrenn up` is started with, over our own environment."""
        return {
            "WRENN_DIR": str(self.data_dir),
            "WRENN_CP_LISTEN_ADDR": f"127.0.0.1:{self.cp_port}",
            "WRENN_HOST_LISTEN_ADDR": f"127.0.0.1:{self.agent_port}",
            "DATABASE_URL": self.database_url,
            **self.extra_env,
        }

    def start(self, timeout: float = 120.0) -> None:
        self.env_file.unlink(missing_ok=True)
        with self.log_file.open("ab") as log:
            self.process = start_wrenn("up", self.environment(), log)
        deadline = time.monotonic() + timeout
        while not self.env_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"wrenn up did not start:\n{self.log_file.read_text()[-3000:]}")
            time.sleep(0.1)
        httpx.get(f"{self.base_url}/health", timeout=10).raise_for_status()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"X-API-Key": self.api_key}, timeout=60)

    def destroy_all(self) -> None:
        with self.client() as http:
            for capsule in http.get("/v1/capsules").json():
                http.delete(f"/v1/capsules/{capsule['id']}")
