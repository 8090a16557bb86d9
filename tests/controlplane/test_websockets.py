"""The stream and terminal WebSockets with a raw client: refusals, bad frames, limits, stop and re-attach.

Every test runs against two of uvicorn's WebSocket implementations: websockets-sansio (what `wrenn up` runs,
and uvicorn's `auto` choice) and wsproto, both serving the same database. One real capsule per database
backend serves the whole module.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from wrenn_server.controlplane.ids import Kind, format_id
from wrenn_server.controlplane.routes.streams import MAX_FRAME_BYTES
from wrenn_server.controlplane.settings import ControlPlaneSettings

from .conftest import Running
from .harness import Harness, ServerThread, serving, settings_for

IMPLEMENTATIONS = ["websockets-sansio", "wsproto"]
FIVE_MIB = 5 * 1024 * 1024


@pytest.fixture(scope="module", params=IMPLEMENTATIONS)
async def ws_server(
    request: pytest.FixtureRequest, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ServerThread]:
    async with serving(settings_for(Path(tmp_path_factory.mktemp("cp-ws")), database_url), request.param) as thread:
        yield thread


def open_ws(server: ServerThread, path: str, headers: dict[str, str] | None = None) -> connect:
    url = server.base_url.replace("http://", "ws://") + path
    return connect(url, additional_headers=headers or {}, proxy=None, max_size=None, open_timeout=30)


async def until_closed(ws: ClientConnection, timeout: float = 30.0) -> tuple[list[Any], int | None]:
    """Every frame until the server closes (JSON frames parsed), and the close code."""
    frames: list[Any] = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                message = await ws.recv()
                frames.append(json.loads(message) if isinstance(message, str) else message)
    except ConnectionClosed:
        pass
    return frames, ws.close_code


async def read_until(ws: ClientConnection, needle: bytes, timeout: float = 30.0) -> tuple[bytes, list[Any]]:
    """Terminal output until `needle` shows, and the control frames seen meanwhile."""
    seen, controls = b"", []
    async with asyncio.timeout(timeout):
        while needle not in seen:
            message = await ws.recv()
            if isinstance(message, bytes):
                seen += message
            else:
                controls.append(json.loads(message))
    return seen, controls


async def next_control(ws: ClientConnection, timeout: float = 30.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            message = await ws.recv()
            if isinstance(message, str):
                frame: dict[str, Any] = json.loads(message)
                return frame


async def process_pids(server: ServerThread, running: Running) -> set[int]:
    capsule, headers = running
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=30) as http:
        resp = await http.get(f"/v1/capsules/{capsule}/processes")
        assert resp.status_code == 200, resp.text
        return {p["pid"] for p in resp.json()["processes"]}


async def wait_gone(server: ServerThread, running: Running, pid: int) -> None:
    deadline = time.monotonic() + 10
    while pid in await process_pids(server, running):
        assert time.monotonic() < deadline, f"process {pid} still runs"
        await asyncio.sleep(0.1)


PATHS = ["/exec/stream", "/processes/1/stream", "/pty"]


@pytest.mark.parametrize("suffix", PATHS)
@pytest.mark.parametrize("key", [None, "wrn_" + "0" * 32])
async def test_refused_without_valid_auth(
    ws_server: ServerThread, running: Running, suffix: str, key: str | None
) -> None:
    capsule, _ = running
    headers = {"X-API-Key": key} if key else {}
    with pytest.raises(InvalidStatus) as refused:
        async with open_ws(ws_server, f"/v1/capsules/{capsule}{suffix}", headers):
            pass
    response = refused.value.response
    assert response.status_code == 401
    assert json.loads(response.body or b"{}")["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("suffix", PATHS)
async def test_missing_or_stopped_capsule_is_one_error_frame(
    ws_server: ServerThread, harness: Harness, running: Running, suffix: str
) -> None:
    _, headers = running
    team_id, key = await harness.team()
    stopped = await harness.capsule(team_id, "paused")
    cases = [
        (format_id(Kind.SANDBOX, uuid.uuid4()), headers, "not found"),
        ("cl-nonsense", headers, "invalid sandbox ID"),
        (stopped, {"X-API-Key": key}, "sandbox is not running (status: paused)"),
    ]
    for capsule, auth, message in cases:
        async with open_ws(ws_server, f"/v1/capsules/{capsule}{suffix}", auth) as ws:
            frames, code = await until_closed(ws)
        assert len(frames) == 1 and frames[0]["type"] == "error", frames
        assert message in frames[0]["data"] and code == 1000
        assert frames[0].get("fatal") is (True if suffix == "/pty" else None)


BAD_FIRST_FRAMES: list[str | bytes] = [
    "not json",
    "[1, 2]",
    json.dumps({"cmd": "true"}),
    json.dumps({"type": 5}),
    json.dumps({"type": "start"}),
    json.dumps({"type": "start", "cmd": ""}),
    json.dumps({"type": "start", "cmd": "true", "args": "oops"}),
    json.dumps({"type": "hello"}),
    b"\x00binary",
]


async def refused_first_frame(
    ws_server: ServerThread, running: Running, path: str, frame: str | bytes
) -> list[dict[str, Any]]:
    """Sends `frame` first on the capsule's socket at `path`; answers the frames the server sent before closing
    normally, having checked that no process was started (or left behind) by it."""
    capsule, headers = running
    before = await process_pids(ws_server, running)
    async with open_ws(ws_server, f"/v1/capsules/{capsule}/{path}", headers) as ws:
        await ws.send(frame)
        frames, code = await until_closed(ws)
    assert code == 1000
    assert await process_pids(ws_server, running) == before
    return frames


@pytest.mark.parametrize("frame", BAD_FIRST_FRAMES)
async def test_exec_stream_bad_first_frame(ws_server: ServerThread, running: Running, frame: str | bytes) -> None:
    frames = await refused_first_frame(ws_server, running, "exec/stream", frame)
    assert [f["type"] for f in frames] == ["error"]


async def test_exec_stream_stop_kills(ws_server: ServerThread, running: Running) -> None:
    capsule, headers = running
    async with open_ws(ws_server, f"/v1/capsules/{capsule}/exec/stream", headers) as ws:
        await ws.send(json.dumps({"type": "start", "cmd": "/bin/sh", "args": ["-c", "echo up; exec sleep 300"]}))
        start = await next_control(ws)
        assert start["type"] == "start" and start["pid"] in await process_pids(ws_server, running)
        assert await next_control(ws) == {"type": "stdout", "data": "up\n"}
        await ws.send(json.dumps({"type": "stop"}))
        frames, code = await until_closed(ws)
    assert frames == [{"type": "exit", "exit_code": 137}] and code == 1000
    await wait_gone(ws_server, running, start["pid"])


async def test_exec_stream_keeps_characters_split_across_chunks(ws_server: ServerThread, running: Running) -> None:
    capsule, headers = running
    script = "printf 'caf\\303'; sleep 0.3; printf '\\377' >&2; printf '\\251!'; sleep 0.3; printf '\\342\\202'"
    async with open_ws(ws_server, f"/v1/capsules/{capsule}/exec/stream", headers) as ws:
        await ws.send(json.dumps({"type": "start", "cmd": "/bin/sh", "args": ["-c", script]}))
        frames, _ = await until_closed(ws)
    stdout = "".join(f["data"] for f in frames if f["type"] == "stdout")
    stderr = "".join(f["data"] for f in frames if f["type"] == "stderr")
    # An é split between two writes stays whole; the truncated € at the end becomes U+FFFD.
    assert (stdout, stderr) == ("café!\ufffd", "\ufffd")
    assert frames[-1] == {"type": "exit", "exit_code": 0}


async def guest_pids(server: ServerThread, running: Running) -> set[int]:
    """Every process of the capsule as its kernel lists them (not only those envd started)."""
    capsule, headers = running
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=30) as http:
        body = {"cmd": "/bin/sh", "args": ["-c", "for d in /proc/[0-9]*; do echo ${d#/proc/}; done"]}
        resp = await http.post(f"/v1/capsules/{capsule}/exec", json=body)
        assert resp.status_code == 200, resp.text
        return {int(line) for line in resp.json()["stdout"].split()}


async def start_sleeper(ws: ClientConnection, server: ServerThread, running: Running) -> int:
    """Start a long command on the exec stream and see it run: its output arrives, and the capsule lists its
    pid (to envd and to the guest's kernel alike). Answers the pid."""
    await ws.send(json.dumps({"type": "start", "cmd": "/bin/sh", "args": ["-c", "echo sleeping; exec sleep 300"]}))
    start = await next_control(ws)
    assert start["type"] == "start", start
    assert await next_control(ws) == {"type": "stdout", "data": "sleeping\n"}
    pid = int(start["pid"])
    assert pid in await process_pids(server, running)
    assert pid in await guest_pids(server, running)
    return pid


async def test_exec_stream_dropped_socket_kills(ws_server: ServerThread, running: Running) -> None:
    capsule, headers = running
    async with open_ws(ws_server, f"/v1/capsules/{capsule}/exec/stream", headers) as ws:
        pid = await start_sleeper(ws, ws_server, running)
    await wait_gone(ws_server, running, pid)
    assert pid not in await guest_pids(ws_server, running)


async def test_exec_stream_bad_frame_midway_kills(ws_server: ServerThread, running: Running) -> None:
    capsule, headers = running
    async with open_ws(ws_server, f"/v1/capsules/{capsule}/exec/stream", headers) as ws:
        pid = await start_sleeper(ws, ws_server, running)
        await ws.send("{broken")
        frames, code = await until_closed(ws)
    assert [f["type"] for f in frames] == ["error"] and code == 1000
    await wait_gone(ws_server, running, pid)
    assert pid not in await guest_pids(ws_server, running)


@pytest.mark.parametrize("suffix", ["/exec/stream", "/pty"])
async def test_oversized_frame_closes_1009(ws_server: ServerThread, running: Running, suffix: str) -> None:
    capsule, headers = running
    async with open_ws(ws_server, f"/v1/capsules/{capsule}{suffix}", headers) as ws:
        await ws.send(json.dumps({"type": "start", "cmd": "x" * FIVE_MIB}))
        _, code = await until_closed(ws)
    assert code == 1009


async def test_process_stream_by_tag_stop_leaves_it_running(ws_server: ServerThread, running: Running) -> None:
    capsule, headers = running
    async with httpx.AsyncClient(base_url=ws_server.base_url, headers=headers, timeout=30) as http:
        body = {"cmd": "/bin/sh", "args": ["-c", "echo one; sleep 300"], "background": True}
        resp = await http.post(f"/v1/capsules/{capsule}/exec", json=body)
        assert resp.status_code == 202, resp.text
        pid, tag = resp.json()["pid"], resp.json()["tag"]
        try:
            async with open_ws(ws_server, f"/v1/capsules/{capsule}/processes/{tag}/stream", headers) as ws:
                assert await next_control(ws) == {"type": "start", "pid": pid}
                assert await next_control(ws) == {"type": "stdout", "data": "one\n"}  # replayed
                await ws.send(json.dumps({"type": "stop"}))
                frames, code = await until_closed(ws)
            assert frames == [] and code == 1000
            assert pid in await process_pids(ws_server, running)
        finally:
            await http.delete(f"/v1/capsules/{capsule}/processes/{pid}")


@pytest.mark.parametrize("selector", ["no-such-tag", "999999", "99999999999"])
async def test_process_stream_unknown_process(ws_server: ServerThread, running: Running, selector: str) -> None:
    capsule, headers = running
    async with open_ws(ws_server, f"/v1/capsules/{capsule}/processes/{selector}/stream", headers) as ws:
        frames, code = await until_closed(ws)
    assert [f["type"] for f in frames] == ["error"] and code == 1000


BAD_PTY_FIRST_FRAMES: list[str | bytes] = [
    b"ls\n",
    "not json",
    json.dumps({"type": "resize", "cols": 10, "rows": 10}),
    json.dumps({"type": "start", "cols": "wide"}),
    json.dumps({"type": "start", "rows": -1}),
    json.dumps({"type": "connect"}),
    json.dumps({"type": "connect", "tag": "pty-00000000"}),
    json.dumps({"type": "start", "cmd": "/no/such/shell"}),
]


@pytest.mark.parametrize("frame", BAD_PTY_FIRST_FRAMES)
async def test_pty_bad_first_frame(ws_server: ServerThread, running: Running, frame: str | bytes) -> None:
    frames = await refused_first_frame(ws_server, running, "pty", frame)
    assert len(frames) == 1 and frames[0]["type"] == "error" and frames[0]["fatal"] is True, frames


async def test_pty_controls_and_reattach(ws_server: ServerThread, running: Running) -> None:
    capsule, headers = running
    path = f"/v1/capsules/{capsule}/pty"
    async with open_ws(ws_server, path, headers) as ws:
        await ws.send(json.dumps({"type": "start", "cmd": "/bin/sh", "cols": 90, "rows": 20, "envs": {"V": "v1"}}))
        started = await next_control(ws)
        assert started["type"] == "started" and started["tag"].startswith("pty-") and started["pid"] > 0
        await ws.send(json.dumps({"type": "resize", "cols": 0, "rows": 10}))
        refused = await next_control(ws)  # not fatal: the session goes on
        assert refused["type"] == "error" and "fatal" not in refused, refused
        assert refused["data"].startswith("invalid 'resize' frame: field 'cols'"), refused
        for frame in ({"type": "pong"}, {"type": "whatever"}, {"type": "resize", "cols": 120, "rows": 33}):
            await ws.send(json.dumps(frame))
        for byte in b'echo "$V $(stty size) $((3*4))"\n':  # one frame per keystroke, coalesced on the way
            await ws.send(bytes([byte]))
        _, controls = await read_until(ws, b"v1 33 120 12")
        assert controls == []
        await ws.send("not json")  # a broken client is let go; its terminal stays
        frames, code = await until_closed(ws)
        assert frames[-1]["type"] == "error" and frames[-1]["fatal"] is True and code == 1000
    assert started["pid"] in await process_pids(ws_server, running)
    async with open_ws(ws_server, path, headers) as ws:
        await ws.send(json.dumps({"type": "connect", "tag": started["tag"]}))
        assert await next_control(ws) == {"type": "started", "tag": started["tag"], "pid": started["pid"]}
        await read_until(ws, b"v1 33 120 12")  # replayed
        await ws.send(json.dumps({"type": "kill"}))
        frames, code = await until_closed(ws)
        assert frames[-1] == {"type": "exit", "exit_code": 137} and code == 1000
    await wait_gone(ws_server, running, started["pid"])


async def test_pty_negotiates_permessage_deflate(ws_server: ServerThread, running: Running) -> None:
    """The terminal socket compresses (docs/api.md, "Streams"): a client offering permessage-deflate gets it, and a
    compressed session carries terminal bytes both ways."""
    capsule, headers = running
    async with open_ws(ws_server, f"/v1/capsules/{capsule}/pty", headers) as ws:
        assert ws.response is not None
        assert "permessage-deflate" in ws.response.headers.get("Sec-WebSocket-Extensions", "")
        await ws.send(json.dumps({"type": "start", "cmd": "/bin/sh"}))
        assert (await next_control(ws))["type"] == "started"
        await ws.send(b"echo $((6*7))x$((6*7))\n")
        await read_until(ws, b"42x42")
        await ws.send(json.dumps({"type": "kill"}))
        frames, code = await until_closed(ws)
        assert frames[-1] == {"type": "exit", "exit_code": 137} and code == 1000


async def test_pty_input_up_to_the_read_limit(ws_server: ServerThread, running: Running) -> None:
    """A binary input frame of exactly 4 MiB is taken whole, and the session goes on; one byte more closes
    the socket with 1009 (message too big), nothing of it typed, and the terminal outlives that socket."""
    capsule, headers = running
    path = f"/v1/capsules/{capsule}/pty"
    # A raw terminal without echo: every byte sent reaches the program, and only its output comes back.
    script = f"stty raw -echo; echo ready; head -c {MAX_FRAME_BYTES} | wc -c; echo bye"
    async with open_ws(ws_server, path, headers) as ws:
        await ws.send(json.dumps({"type": "start", "cmd": "/bin/sh", "args": ["-c", script]}))
        assert (await next_control(ws))["type"] == "started"
        await read_until(ws, b"ready\n")
        await ws.send(b"a" * MAX_FRAME_BYTES)
        seen, controls = await read_until(ws, b"bye\n")
        assert seen.split() == [str(MAX_FRAME_BYTES).encode(), b"bye"]
        assert controls == []
        frames, code = await until_closed(ws)
    assert frames[-1] == {"type": "exit", "exit_code": 0} and code == 1000

    script = "stty raw -echo; echo ready; head -c 1 | od -An -c"  # shows the first byte it gets
    async with open_ws(ws_server, path, headers) as ws:
        await ws.send(json.dumps({"type": "start", "cmd": "/bin/sh", "args": ["-c", script]}))
        started = await next_control(ws)
        assert started["type"] == "started"
        await read_until(ws, b"ready\n")
        await ws.send(b"a" * (MAX_FRAME_BYTES + 1))
        _, code = await until_closed(ws)
    assert code == 1009
    async with open_ws(ws_server, path, headers) as ws:
        await ws.send(json.dumps({"type": "connect", "tag": started["tag"]}))
        assert await next_control(ws) == {"type": "started", "tag": started["tag"], "pid": started["pid"]}
        await ws.send(b"z")
        seen, _ = await read_until(ws, b"z")
        frames, code = await until_closed(ws)
    assert seen.split(b"ready\n", 1)[1].split() == [b"z"]  # its first byte: none of the oversized frame
    assert frames[-1] == {"type": "exit", "exit_code": 0} and code == 1000


def test_pty_ping_interval_is_a_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WRENN_PTY_PING_SEC", raising=False)
    assert ControlPlaneSettings(dir=tmp_path).pty_ping_sec == 30
    monkeypatch.setenv("WRENN_PTY_PING_SEC", "2.5")
    assert ControlPlaneSettings(dir=tmp_path).pty_ping_sec == 2.5


@pytest.fixture(params=IMPLEMENTATIONS)
async def pinging_server(
    request: pytest.FixtureRequest, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ServerThread]:
    """A control plane whose terminals ping every half second."""
    settings = settings_for(Path(tmp_path_factory.mktemp("cp-ping")), database_url, pty_ping_sec=0.5)
    async with serving(settings, request.param) as thread:
        yield thread


async def test_pty_pings_and_pong_keeps_the_session(pinging_server: ServerThread, running: Running) -> None:
    capsule, headers = running
    async with open_ws(pinging_server, f"/v1/capsules/{capsule}/pty", headers) as ws:
        await ws.send(json.dumps({"type": "start", "cmd": "/bin/sh"}))
        assert (await next_control(ws))["type"] == "started"
        for _ in range(3):
            assert await next_control(ws) == {"type": "ping"}
            await ws.send(json.dumps({"type": "pong"}))
        await ws.send(b"echo pong-$((6*7))\n")
        _, controls = await read_until(ws, b"pong-42")
        assert all(frame == {"type": "ping"} for frame in controls), controls
        await ws.send(json.dumps({"type": "kill"}))
        frames, code = await until_closed(ws)
    assert frames[-1] == {"type": "exit", "exit_code": 137} and code == 1000
