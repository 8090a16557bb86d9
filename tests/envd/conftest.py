"""Fixtures that run the real envd as a subprocess and talk to it over HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tests.skips import skip_missing
from wrenn_server.images.builder import build_spawner

REPO = Path(__file__).resolve().parents[2]
# The guest runs envd on its own python3 (3.11); override to try another interpreter.
PYTHON = os.environ.get("WRENN_ENVD_PYTHON", "python3")
FORWARD_ADDR = "127.0.0.2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_SPAWNER = Path(tempfile.mkdtemp(prefix="wrenn-spawn-")) / "wrenn-spawn"


def spawner() -> Path:
    """envd's process helper, built the way the image builder builds it."""
    if not _SPAWNER.exists():
        build_spawner(_SPAWNER)
    return _SPAWNER


@asynccontextmanager
async def running_envd(root: Path = REPO) -> AsyncIterator[httpx.AsyncClient]:
    """envd from `root` (this checkout, or a copy of its envd and wire contract, say one patched)."""
    port = free_port()
    # PYTHONPATH too: a checkout named there would win over a copy's package.
    env = {**os.environ, "PYTHONPATH": str(root), "WRENN_ENVD_FORWARD_ADDR": FORWARD_ADDR, "ENVD_TEST_SECRET": "leak"}
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "wrenn_server.envd",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--spawner",
                str(spawner()),
            ],
            cwd=root,
            env=env,
            stdout=log,
            stderr=log,
        )
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                deadline = time.monotonic() + 15
                while True:
                    try:
                        (await client.get("/health")).raise_for_status()
                        break
                    except httpx.TransportError:
                        if proc.poll() is not None or time.monotonic() > deadline:
                            log.seek(0)
                            pytest.fail(f"envd did not start: {log.read().decode()}")
                        await asyncio.sleep(0.05)
                yield client
        finally:
            proc.terminate()
            proc.wait(5)


@pytest_asyncio.fixture(scope="session")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """One envd shared by the tests that do not call /init."""
    async with running_envd() as c:
        yield c


@pytest_asyncio.fixture
async def fresh_client() -> AsyncIterator[httpx.AsyncClient]:
    """An envd of its own, for tests that change its defaults."""
    async with running_envd() as c:
        yield c


@pytest.fixture
def user() -> Iterator[pwd.struct_passwd]:
    """A throwaway unprivileged user with a home directory."""
    if os.geteuid() != 0 or not shutil.which("useradd"):
        skip_missing("root", "creating a user needs root and useradd")
    name = f"wrenn{uuid.uuid4().hex[:8]}"
    home = os.path.join(tempfile.gettempdir(), name)
    subprocess.run(["useradd", "--create-home", "--home-dir", home, "--shell", "/bin/sh", name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


async def run(client: httpx.AsyncClient, cmd: str, *args: str, **fields: Any) -> dict[str, Any]:
    """Starts a process in run mode; answers the JSON body, asserting a 200."""
    response = await client.post("/process/start", json={"cmd": cmd, "args": list(args), "mode": "run", **fields})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def sh(client: httpx.AsyncClient, script: str, **fields: Any) -> dict[str, Any]:
    return await run(client, "sh", "-c", script, **fields)


async def read_events(response: httpx.Response, until_end: bool = True) -> AsyncIterator[dict[str, Any]]:
    async for line in response.aiter_lines():
        if line:
            event: dict[str, Any] = json.loads(line)
            yield event
            if until_end and event["type"] == "end":
                return


async def collect(response: httpx.Response) -> list[dict[str, Any]]:
    return [event async for event in read_events(response) if event["type"] != "keepalive"]


def output(events: list[dict[str, Any]], kind: str = "stdout") -> bytes:
    return b"".join(unb64(e["data"]) for e in events if e["type"] == kind)
