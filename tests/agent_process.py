"""`wrenn agent` as an operator runs it, in a process of its own on gVisor, and a poller to wait on it with."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self, TypeVar

import pytest

from tests.cleanup import SLOTS, purge_data_dir
from tests.skips import skip_missing
from tests.stack import free_port, start_wrenn
from wrenn_server.hostagent.runtimes import build_runtime

T = TypeVar("T")


async def until(probe: Callable[[], Awaitable[T | None]], what: str, seconds: float = 120) -> T:
    """Poll `probe` until it answers something; fail naming `what` after `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        found = await probe()
        if found is not None:
            return found
        assert loop.time() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.2)


async def skip_without_gvisor(data_dir: Path) -> None:
    probe = await build_runtime("gvisor", data_dir).probe()
    if not probe.available:
        skip_missing("runtime gvisor", f"it cannot run here: {probe.reason}")


@dataclass
class AgentProcess:
    """`wrenn agent` in a process and session of its own, configured by its environment only (`env`, over
    what every agent here gets), its output in `agent.log`."""

    dir: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def in_dir(cls, data_dir: Path, **env: str) -> Self:
        """An agent with a data directory of its own under `data_dir`, sharing its base image."""
        root = data_dir / f"agent-{uuid.uuid4().hex[:8]}"
        (root / "images" / "teams").mkdir(parents=True)
        (root / "images" / "minimal").symlink_to(data_dir / "images" / "minimal")
        return cls(root, env)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def owner(self) -> str:
        """What the agent writes in the machine-wide slot files it holds."""
        return str(self.dir.resolve())

    @property
    def log(self) -> Path:
        return self.dir / "agent.log"

    @property
    def credentials(self) -> Path:
        return self.dir / "host-credentials.json"

    def start(self, **extra: str) -> None:
        """Start it with `extra` over its `env`."""
        environment = {
            "WRENN_DIR": str(self.dir),
            "WRENN_HOST_LISTEN_ADDR": self.address,
            "WRENN_RUNTIME": "gvisor",
            "WRENN_LOG_LEVEL": "info",
            **self.env,
            **extra,
        }
        with self.log.open("ab") as log:
            self.process = start_wrenn("agent", environment, log)

    async def exited(self, timeout: float = 120) -> int:
        assert self.process is not None
        try:
            code = await asyncio.to_thread(self.process.wait, timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            await asyncio.to_thread(self.process.wait)
            pytest.fail(f"the agent did not exit:\n{self.tail()}")
        self.process = None
        return code

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal it and answer its exit code (0 when it was not running)."""
        if self.process is None:
            return 0
        self.process.send_signal(sig)
        return await self.exited()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else ""

    async def close(self) -> None:
        """Stop it and remove whatever of it is left on the machine (capsules, mounts, network slots)."""
        try:
            await self.stop()
        finally:
            await asyncio.to_thread(purge_data_dir, self.dir)

    def leftovers(self) -> list[str]:
        """What the agent holds on the machine: runsc containers and network slots."""
        listed = subprocess.run(
            ["runsc", "--root", str(self.dir / "runsc"), "list", "-quiet"], capture_output=True, text=True
        )
        slots = [p.name for p in SLOTS.glob("*") if _read(p) == self.owner] if SLOTS.exists() else []
        return [f"container {name}" for name in listed.stdout.split()] + [f"slot {slot}" for slot in slots]


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
