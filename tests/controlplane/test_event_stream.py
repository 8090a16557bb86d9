"""`GET /v1/events/stream` (api.md §2.9) over real HTTP: its auth and first frame, the SDK's event names,
keepalives, a slow reader dropped without holding anyone up, a shutdown with a stream open."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import typing
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from wrenn.models import SSEEvent

from wrenn_server.controlplane.services.events import (
    EventName,
)

from .harness import Harness, ServerThread, serving, settings_for
from .pg import free_port
from .sse import (
    CONNECTED,
    STREAM,
    Sse,
    control_plane,
    create,
    eventually,
    open_stream,
    synthetic,
)
from .test_errors_auth import assert_error


def test_event_names_are_the_sdks() -> None:
    sdk_enum = typing.get_args(SSEEvent.model_fields["event"].annotation)[0]
    assert {name.value for name in EventName} == {name.value for name in sdk_enum}


async def test_stream_needs_auth(server: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        assert_error(await client.get(STREAM), 401, "unauthorized")
        assert_error(await client.get(STREAM, headers={"X-API-Key": "wrn_" + "0" * 32}), 401, "unauthorized")
        assert_error(await client.get(STREAM, headers={"Authorization": "Bearer junk"}), 401, "unauthorized")
        assert_error(await client.get(STREAM, headers={"Authorization": "Basic abc"}), 401, "unauthorized")


async def test_connected_comes_first(server: ServerThread, team: tuple[object, str]) -> None:
    async with (
        httpx.AsyncClient(base_url=server.base_url, timeout=10) as client,
        client.stream("GET", STREAM, headers={"X-API-Key": team[1]}) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["x-accel-buffering"] == "no"
        received = b""
        async for chunk in resp.aiter_raw():
            received += chunk
            if len(received) >= len(CONNECTED):
                break
        assert received == CONNECTED


async def test_slow_reader_is_dropped_without_blocking(
    server: ServerThread,
    harness: Harness,
    http: httpx.AsyncClient,
    own_team: tuple[uuid.UUID, dict[str, str]],
    cleanup: list[str],
) -> None:
    """A reader that stops reading is dropped once its buffers are full; publishers, other readers and
    creates carry on as if it were not there."""
    team_id, headers = own_team
    bus = control_plane(server).events.bus
    loop = server.server.servers[0].get_loop()
    await eventually(lambda: bus.subscribers == 0)  # earlier tests' streams left nothing behind
    before = 0
    slow = await asyncio.to_thread(_slow_reader, server.port, headers["X-API-Key"])
    try:
        async with open_stream(server.base_url, headers) as fast:
            await eventually(lambda: bus.subscribers == before + 2)
            flood = synthetic(team_id, 1500, pad=4000)  # ~6 MB: more than the kernel buffers (~3 MB here)
            reading = asyncio.create_task(_count(fast, flood[-1].resource_id, len(flood)))
            for start in range(0, len(flood), 4):  # paced, so the fast reader keeps up
                batch = flood[start : start + 4]
                loop.call_soon_threadsafe(lambda batch=batch: [bus.publish(event) for event in batch])
                await asyncio.sleep(0.01)
            assert await asyncio.wait_for(reading, 60) == len(flood)  # the fast reader missed nothing
            await eventually(lambda: bus.subscribers == before + 1)  # the slow one is gone

            async with asyncio.timeout(60):  # and a create still goes through
                capsule = await create(http, headers, cleanup)
            frames = await fast.events_of(capsule["id"], until="capsule.create")
            assert frames[-1].json()["sandbox"]["status"] == "running"
            assert (await http.delete(f"/v1/capsules/{capsule['id']}", headers=headers)).status_code == 204

        received = await asyncio.to_thread(_read_to_end, slow)
    finally:
        slow.close()
    assert received.endswith(b"\r\n0\r\n\r\n"), received[-200:]  # its response ended
    assert 0 < received.count(b"event: capsule.state.changed") < len(flood)
    await eventually(lambda: bus.subscribers == before)


def _slow_reader(port: int, api_key: str) -> socket.socket:
    """A raw HTTP client with a tiny receive buffer that reads up to `connected` and then stops."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {STREAM} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {api_key}\r\n\r\n".encode())
    head = b""
    while b'"message":"connected"}' not in head:
        head += sock.recv(1024)
    return sock


def _read_to_end(sock: socket.socket) -> bytes:
    received = b""
    while not received.endswith(b"\r\n0\r\n\r\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


async def _count(stream: Sse, resource_id: str, expected: int) -> int:
    count = 0
    while count < expected:
        frame = await stream.frame(30)
        if frame.data is not None and frame.json()["resource"]["id"] == resource_id:
            count += 1
    return count


@pytest.fixture
async def quick_server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServerThread]:
    """A control plane that sends keepalives after one second of silence."""
    async with serving(settings_for(tmp_path_factory.mktemp("cp-quick"), database_url, sse_keepalive_sec=1)) as thread:
        yield thread


async def test_keepalive_and_no_leak(quick_server: ServerThread, harness: Harness) -> None:
    _, api_key = await harness.team()
    bus = control_plane(quick_server).events.bus
    assert bus.subscribers == 0
    async with open_stream(quick_server.base_url, {"X-API-Key": api_key}) as stream:
        assert bus.subscribers == 1
        for _ in range(2):
            frame = await stream.frame(timeout=5)
            assert (frame.comment, frame.event, frame.data) == ("keepalive", None, None)
    await eventually(lambda: bus.subscribers == 0)  # the client went away: so did its subscription


async def test_shutdown_with_open_stream(tmp_path: Path) -> None:
    """`wrenn control-plane` stops on SIGTERM within seconds although a client holds a stream open."""
    port = free_port()
    env = {
        **os.environ,
        "WRENN_DIR": str(tmp_path),
        "WRENN_LISTEN": f"127.0.0.1:{port}",
        "WRENN_JWT_SECRET": "test-secret-" + "x" * 32,
        "WRENN_RECONCILE_INTERVAL_SEC": "3600",
    }
    for name in ("REDIS_URL", "WRENN_REDIS_URL", "DATABASE_URL", "WRENN_DATABASE_URL", "JWT_SECRET"):
        env.pop(name, None)
    process = subprocess.Popen(
        [sys.executable, "-m", "wrenn_server.cli", "control-plane"], env=env, stderr=subprocess.PIPE
    )
    base_url = f"http://127.0.0.1:{port}"
    harness = Harness.connect(settings_for(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'wrenn.db'}"), base_url)
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=5) as client, asyncio.timeout(60):
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/health")).status_code == 200:
                        break
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                await asyncio.sleep(0.1)
        _, api_key = await harness.team()
        async with open_stream(base_url, {"X-API-Key": api_key}) as stream:
            process.send_signal(signal.SIGTERM)
            with pytest.raises((EOFError, httpx.RemoteProtocolError, httpx.ReadError)):
                await stream.frame(timeout=10)
        await asyncio.wait_for(asyncio.to_thread(process.wait), 15)
    finally:
        await harness.close()
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()
