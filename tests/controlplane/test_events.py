"""`GET /v1/events/stream` (docs/api.md, "Events") over real HTTP, the event bus behind it (in-process and Redis),
and the real SDK's `events.stream()` reading it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import typing
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from sqlalchemy import select, update
from wrenn import WrennClient
from wrenn.models import SSEEvent
from wrenn.models import Status as SdkStatus

from tests.redis_server import RedisServer, redis_server
from wrenn_server.controlplane.db.models import Host, TeamApiKey
from wrenn_server.controlplane.db.types import utcnow
from wrenn_server.controlplane.ids import Kind, format_id, hash_secret, parse_id
from wrenn_server.controlplane.services.agents import AgentPool, HostRef
from wrenn_server.controlplane.services.bootstrap import ensure_admin_key
from wrenn_server.controlplane.services.events import (
    CHANNEL,
    SYSTEM,
    Actor,
    CapsuleEvents,
    Event,
    EventName,
    InProcessBus,
    Outcome,
    RedisBus,
)
from wrenn_server.controlplane.services.lifecycle import DESTROYED
from wrenn_server.controlplane.services.reconciler import HOST_SILENT, NOT_ON_HOST, Reconciler
from wrenn_server.controlplane.state import ControlPlane, capsule_json

from .agent import Agent, agent_team
from .harness import AGENT_TOKEN, Harness, ServerThread, serving, settings_for
from .pg import free_port
from .test_errors_auth import assert_error

__all__ = ["redis_server"]

STREAM = "/v1/events/stream"
CONNECTED = b'event: connected\ndata: {"event":"connected","message":"connected"}\n\n'
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


# --- reading a stream ---------------------------------------------------------------------------------


@dataclass
class Frame:
    event: str | None = None
    data: str | None = None
    comment: str | None = None

    def json(self) -> dict[str, Any]:
        assert self.data is not None, self
        body: dict[str, Any] = json.loads(self.data)
        return body


class Sse:
    """An open event stream, read frame by frame."""

    def __init__(self, resp: httpx.Response) -> None:
        self.resp = resp
        self._lines = resp.aiter_lines()

    async def frame(self, timeout: float = 60) -> Frame:
        frame, seen = Frame(), False
        async with asyncio.timeout(timeout):
            async for line in self._lines:
                if line == "":
                    if seen:
                        return frame
                elif line.startswith(":"):
                    frame.comment, seen = line[1:].strip(), True
                elif line.startswith("event:"):
                    frame.event, seen = line[6:].strip(), True
                elif line.startswith("data:"):
                    data = line[5:].lstrip()
                    frame.data, seen = (data if frame.data is None else f"{frame.data}\n{data}"), True
        raise EOFError("the stream ended")

    async def events_of(self, resource_id: str, until: str, timeout: float = 120) -> list[Frame]:
        """Frames about `resource_id` up to and including the first `until` event."""
        frames: list[Frame] = []
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.frame(timeout)
                if frame.data is None:
                    continue
                if frame.json()["resource"]["id"] == resource_id:
                    frames.append(frame)
                    if frame.event == until:
                        return frames


@contextlib.asynccontextmanager
async def open_stream(base_url: str, headers: dict[str, str]) -> AsyncIterator[Sse]:
    """A subscribed stream: its `connected` frame has been read."""
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(10, read=90)) as client,
        client.stream("GET", STREAM, headers=headers) as resp,
    ):
        assert resp.status_code == 200
        stream = Sse(resp)
        first = await stream.frame(10)
        assert (first.event, first.json()) == ("connected", {"event": "connected", "message": "connected"})
        yield stream


async def key_id(harness: Harness, api_key: str) -> str:
    async with harness.sessionmaker() as session:
        key = await session.scalar(select(TeamApiKey).where(TeamApiKey.key_hash == hash_secret(api_key)))
        assert key is not None
        return format_id(Kind.API_KEY, key.id)


def control_plane(server: ServerThread) -> ControlPlane:
    """The running control plane inside a test server (to watch its bus)."""
    return typing.cast(ControlPlane, server.server.config.app.state.control_plane)


async def eventually(check: Callable[[], bool], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


def synthetic(team_id: uuid.UUID, count: int, pad: int = 1200) -> list[Event]:
    """Events of a made-up capsule, `pad` characters each, to fill buffers with."""
    resource = format_id(Kind.SANDBOX, uuid.uuid4())
    return [
        Event(
            EventName.CAPSULE_STATE_CHANGED,
            team_id,
            resource,
            SYSTEM,
            metadata={"from": "running", "to": "running", "n": str(i), "pad": "x" * pad},
        )
        for i in range(count)
    ]


async def create(http: httpx.AsyncClient, headers: dict[str, str], cleanup: list[str]) -> dict[str, Any]:
    resp = await http.post("/v1/capsules", json={}, headers=headers)
    assert resp.status_code == 201 and resp.json()["status"] == "running", resp.text
    cleanup.append(resp.json()["id"])
    body: dict[str, Any] = resp.json()
    return body


def bodies_of(frames: list[Frame], team_id: uuid.UUID, wire_id: str, actor: dict[str, str]) -> list[dict[str, Any]]:
    """The frames' bodies, each checked for what every event of one capsule carries: its name (the frame's
    `event:` line too), the team, the capsule as its resource, the actor, an RFC 3339 time, and no error."""
    bodies = [frame.json() for frame in frames]
    assert [frame.event for frame in frames] == [body["event"] for body in bodies]
    for body in bodies:
        assert body["team_id"] == format_id(Kind.TEAM, team_id)
        assert body["resource"] == {"id": wire_id, "type": "sandbox"}
        assert body["actor"] == actor
        assert RFC3339.match(body["timestamp"]), body["timestamp"]
        assert "error" not in body
    return bodies


# --- the contract -------------------------------------------------------------------------------------


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


async def test_create_and_destroy_are_events(
    server: ServerThread,
    harness: Harness,
    http: httpx.AsyncClient,
    own_team: tuple[uuid.UUID, dict[str, str]],
    cleanup: list[str],
) -> None:
    team_id, headers = own_team
    actor = {"type": "api_key", "id": await key_id(harness, headers["X-API-Key"])}
    _, other_key = await harness.team()
    admin_key = await ensure_admin_key(harness.sessionmaker, None)

    sdk = WrennClient(api_key=headers["X-API-Key"], base_url=server.base_url)
    sdk_connected = threading.Event()

    def read_with_sdk() -> list[SSEEvent]:
        seen = []
        with contextlib.closing(sdk.events.stream()) as stream:
            for event in stream:
                seen.append(event)
                sdk_connected.set()  # the first one is the `connected` frame
                if event.event == "capsule.create":
                    break
        return seen

    sdk_reader = asyncio.ensure_future(asyncio.to_thread(read_with_sdk))
    try:
        async with (
            open_stream(server.base_url, headers) as mine,
            open_stream(server.base_url, {"X-API-Key": other_key}) as others,
            open_stream(server.base_url, {"X-API-Key": admin_key}) as admins,
        ):
            assert await asyncio.to_thread(sdk_connected.wait, 30)
            capsule = await create(http, headers, cleanup)
            wire_id = capsule["id"]
            got = await http.get(f"/v1/capsules/{wire_id}", headers=headers)
            assert (await http.delete(f"/v1/capsules/{wire_id}", headers=headers)).status_code == 204

            frames = await mine.events_of(wire_id, until="capsule.destroy")
            sdk_seen = await asyncio.wait_for(asyncio.shield(sdk_reader), 60)
            admin_frames = await admins.events_of(wire_id, until="capsule.destroy")
            with pytest.raises(TimeoutError):
                print("another team saw:", await others.frame(timeout=2))
    finally:
        sdk.close()  # ends the reader should it still wait
        with contextlib.suppress(Exception):
            await sdk_reader

    bodies = bodies_of(frames, team_id, wire_id, actor)
    assert [(b["event"], b.get("outcome"), b.get("metadata")) for b in bodies] == [
        ("capsule.state.changed", None, {"from": "starting", "to": "running"}),
        ("capsule.create", "success", None),
        ("capsule.state.changed", None, {"from": "running", "to": "stopping"}),
        ("capsule.state.changed", None, {"from": "stopping", "to": "stopped", "reason": DESTROYED}),
        ("capsule.destroy", "success", None),
    ]
    created, destroyed = bodies[1], bodies[4]
    rendered = got.json()
    assert rendered.pop("disk_used_mb") >= 0  # measured on the host for GET of one capsule only
    assert created["sandbox"] == rendered  # exactly as GET /v1/capsules/{id} renders it
    assert created["sandbox"]["status"] == "running"
    assert destroyed["sandbox"]["status"] == "stopped" and destroyed["sandbox"]["id"] == wire_id
    assert [frame.json() for frame in admin_frames] == bodies  # admins see every team

    # The SDK reads only `data:` lines: the `connected` frame names itself in its data too.
    assert sdk_seen[0].event == "connected"
    sdk_created = sdk_seen[-1]
    assert sdk_created.event == "capsule.create" and sdk_created.outcome == "success"
    assert sdk_created.resource is not None and sdk_created.resource.id == wire_id
    assert sdk_created.sandbox is not None and sdk_created.sandbox.status == SdkStatus.running
    assert sdk_created.actor is not None and sdk_created.actor.type == "api_key"


async def test_pause_and_resume_are_events(
    server: ServerThread,
    harness: Harness,
    http: httpx.AsyncClient,
    own_team: tuple[uuid.UUID, dict[str, str]],
    cleanup: list[str],
) -> None:
    team_id, headers = own_team
    actor = {"type": "api_key", "id": await key_id(harness, headers["X-API-Key"])}
    other_team, other_key = await harness.team()
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    await harness.template(other_team, marker)
    async with (
        open_stream(server.base_url, headers) as mine,
        open_stream(server.base_url, {"X-API-Key": other_key}) as others,
    ):
        wire_id = (await create(http, headers, cleanup))["id"]
        await mine.events_of(wire_id, until="capsule.create")
        paused = await http.post(f"/v1/capsules/{wire_id}/pause", headers=headers)
        assert paused.status_code == 200 and paused.json()["status"] == "paused", paused.text
        pause_frames = await mine.events_of(wire_id, until="capsule.pause")
        resumed = await http.post(f"/v1/capsules/{wire_id}/resume", headers=headers)
        assert resumed.status_code == 200 and resumed.json()["status"] == "running", resumed.text
        resume_frames = await mine.events_of(wire_id, until="capsule.resume")
        got = await http.get(f"/v1/capsules/{wire_id}", headers=headers)
        assert (await http.delete(f"/v1/capsules/{wire_id}", headers=headers)).status_code == 204

        # The other team's stream: the event it causes itself comes after ours, and is the only one it sees.
        assert (await http.delete(f"/v1/snapshots/{marker}", headers={"X-API-Key": other_key})).status_code == 204
        seen_by_others: list[Frame] = []
        while not seen_by_others or seen_by_others[-1].event != "template.snapshot.delete":
            frame = await others.frame()
            if frame.data is not None:
                seen_by_others.append(frame)
    assert [frame.json()["resource"] for frame in seen_by_others] == [{"id": marker, "type": "template"}]

    bodies = bodies_of(pause_frames + resume_frames, team_id, wire_id, actor)
    assert [(b["event"], b.get("outcome"), b.get("metadata")) for b in bodies] == [
        ("capsule.state.changed", None, {"from": "running", "to": "pausing"}),
        ("capsule.state.changed", None, {"from": "pausing", "to": "paused"}),
        ("capsule.pause", "success", None),
        ("capsule.state.changed", None, {"from": "paused", "to": "resuming"}),
        ("capsule.state.changed", None, {"from": "resuming", "to": "running"}),
        ("capsule.resume", "success", None),
    ]
    for body in bodies:
        assert body["sandbox"]["id"] == wire_id
        if body["event"] == "capsule.state.changed":
            assert body["sandbox"]["status"] == body["metadata"]["to"]
    paused_event, resumed_event = bodies[2], bodies[5]
    assert paused_event["sandbox"]["status"] == "paused"
    rendered = got.json()
    rendered.pop("disk_used_mb")  # measured on the host for GET of one capsule only
    assert resumed_event["sandbox"] == rendered  # exactly as GET /v1/capsules/{id} renders it
    assert SSEEvent.model_validate(paused_event).event == "capsule.pause"
    assert SSEEvent.model_validate(resumed_event).event == "capsule.resume"


async def test_failed_create_is_an_error_event(server: ServerThread, harness: Harness, http: httpx.AsyncClient) -> None:
    team_id, api_key = await harness.team(byoc=True)
    await harness.host(team_id, address=f"127.0.0.1:{free_port()}")  # nothing listens there
    headers = {"X-API-Key": api_key}
    async with open_stream(server.base_url, headers) as mine:
        resp = await http.post("/v1/capsules", json={}, headers=headers)
        assert resp.status_code >= 500, resp.text
        (row,) = await harness.rows(team_id)
        wire_id = format_id(Kind.SANDBOX, row.id)
        frames = await mine.events_of(wire_id, until="capsule.create")
    changed, created = (frame.json() for frame in frames)
    assert changed["metadata"] == {"from": "starting", "to": "error", "reason": row.error}
    assert changed["error"] == row.error
    assert created["outcome"] == "error" and created["error"] == row.error and row.error
    assert created["sandbox"]["status"] == "error" and created["sandbox"]["metadata"]["end_reason"] == row.error


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


# --- the reconciler -----------------------------------------------------------------------------------


async def test_reconciler_moves_are_events(harness: Harness, agent: Agent) -> None:
    bus = InProcessBus()
    events = CapsuleEvents(bus, harness.sessionmaker, capsule_json)
    pool = AgentPool()
    reconciler = Reconciler(
        harness.sessionmaker,
        pool,
        interval=3600,
        host_stale_sec=24 * 3600,
        is_booting=lambda _: False,
        events=events,
        transition_grace_sec=0,
    )
    team_id, _ = await harness.team(byoc=True)
    live_host = await harness.host(team_id, address=agent.address)
    never = await harness.capsule(team_id, "running", live_host)  # a capsule the host never had
    cut_short = await harness.capsule(team_id, "stopping", live_host)  # a destroy whose control plane went away
    silent_host = await harness.host(team_id)
    lost = {await harness.capsule(team_id, status, silent_host): status for status in ("running", "starting")}
    async with harness.sessionmaker() as session:
        await session.execute(
            update(Host).where(Host.id == silent_host).values(last_heartbeat_at=utcnow() - timedelta(days=2))
        )
        await session.commit()
    try:
        with bus.subscribe() as subscription:
            await reconciler.reconcile_host(HostRef(live_host, agent.address, AGENT_TOKEN))
            await reconciler.mark_stale_hosts()
            seen = [await subscription.next(timeout=5) for _ in range(5)]
    finally:
        await pool.close()
    finished = [event.payload() for event in seen if event is not None and event.name == "capsule.destroy"]
    assert [(body["resource"]["id"], body["outcome"], body["actor"]) for body in finished] == [
        (cut_short, "success", {"type": "system"})
    ]
    bodies = {
        event.resource_id: event.payload() for event in seen if event is not None and event.name != "capsule.destroy"
    }
    assert set(bodies) == {never, cut_short, *lost}
    expected = {
        never: ("running", "stopped"),
        cut_short: ("stopping", "stopped"),
        **{wire: (status, "missing") for wire, status in lost.items()},
    }
    reasons = {
        never: NOT_ON_HOST,
        cut_short: DESTROYED,
        **{wire: HOST_SILENT.format(seconds=24 * 3600) for wire in lost},
    }
    for wire_id, (old, new) in expected.items():
        body = bodies[wire_id]
        assert body["event"] == "capsule.state.changed" and "outcome" not in body
        assert body["metadata"] == {"from": old, "to": new, "reason": reasons[wire_id]}
        assert body["actor"] == {"type": "system"}
        assert body["team_id"] == format_id(Kind.TEAM, team_id)
        assert body["sandbox"]["status"] == new and body["sandbox"]["id"] == wire_id


# --- the bus ------------------------------------------------------------------------------------------


def _event(team_id: uuid.UUID, n: int = 0) -> Event:
    return Event(
        EventName.CAPSULE_CREATE,
        team_id,
        format_id(Kind.SANDBOX, uuid.uuid4()),
        Actor("api_key", format_id(Kind.API_KEY, uuid.uuid4())),
        timestamp=utcnow().replace(microsecond=0),  # what the wire keeps
        outcome=Outcome.SUCCESS,
        metadata={"n": str(n)},
        sandbox={"id": "cl-x", "status": "running", "vcpus": 1},
    )


async def test_in_process_bus_drops_a_full_subscriber() -> None:
    bus = InProcessBus()
    team = uuid.uuid4()
    slow, fast = bus.subscribe(), bus.subscribe()
    received = []
    for n in range(100):
        bus.publish(_event(team, n))  # never waits
        received.append(await fast.next(timeout=1))
    numbers = [event.metadata["n"] for event in received if event is not None and event.metadata is not None]
    assert numbers == [str(n) for n in range(100)]
    assert slow.dropped and bus.subscribers == 1
    assert [event async for event in slow] == []  # it ended at once, its backlog discarded
    fast.close()
    assert bus.subscribers == 0
    await bus.close()
    with bus.subscribe() as late:
        assert [event async for event in late] == []


def test_event_payload_round_trips() -> None:
    event = _event(uuid.uuid4())
    assert Event.from_payload(json.loads(event.data)) == event
    payload = event.payload()
    assert payload["team_id"] == format_id(Kind.TEAM, event.team_id)
    assert parse_id(Kind.TEAM, payload["team_id"]) == event.team_id
    assert SSEEvent.model_validate_json(event.data).event == "capsule.create"


async def test_redis_bus_shares_events(redis_server: RedisServer) -> None:
    one, two = RedisBus(redis_server.url), RedisBus(redis_server.url)
    await one.start()
    await two.start()
    try:
        team = uuid.uuid4()
        with one.subscribe() as here, two.subscribe() as there:
            client = aioredis.Redis.from_url(redis_server.url)
            try:
                await client.publish(CHANNEL, b"not json")  # ignored, with a warning
                await client.publish(CHANNEL, json.dumps({"origin": "x", "event": {"event": "nope"}}))
            finally:
                await client.aclose()
            sent = [_event(team, n) for n in range(3)]
            for event in sent:
                one.publish(event)
            assert [await there.next(timeout=5) for _ in sent] == sent
            assert [await here.next(timeout=5) for _ in sent] == sent
            assert await here.next(timeout=0.5) is None  # not a second time through Redis
    finally:
        await one.close()
        await two.close()


async def test_redis_bus_drops_a_full_subscriber_of_another_process(redis_server: RedisServer) -> None:
    """Events that arrive through Redis never wait for a slow reader either: it is dropped, the others go on."""
    one, two = RedisBus(redis_server.url), RedisBus(redis_server.url)
    await one.start()
    await two.start()
    try:
        team = uuid.uuid4()
        slow, fast = two.subscribe(), two.subscribe()
        received = []
        for n in range(100):
            one.publish(_event(team, n))
            received.append(await fast.next(timeout=5))
        numbers = [event.metadata["n"] for event in received if event is not None and event.metadata is not None]
        assert numbers == [str(n) for n in range(100)]
        assert slow.dropped and two.subscribers == 1
        assert [event async for event in slow] == []
        fast.close()
    finally:
        await one.close()
        await two.close()


async def test_two_control_planes_share_events(
    database_url: str,
    redis_server: RedisServer,
    harness: Harness,
    http: httpx.AsyncClient,
    agent: Agent,
    cleanup: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A create through control plane A is seen by a subscriber of control plane B."""
    servers = [
        ServerThread(settings_for(tmp_path_factory.mktemp("cp-redis"), database_url, redis_url=redis_server.url))
        for _ in range(2)
    ]
    for thread in servers:
        await asyncio.to_thread(thread.start)
    a, b = servers
    try:
        team_id, headers = await agent_team(harness, agent)
        async with (
            open_stream(b.base_url, headers) as on_b,
            httpx.AsyncClient(base_url=a.base_url, timeout=60) as via_a,
        ):
            capsule = await create(via_a, headers, cleanup)
            assert (await via_a.delete(f"/v1/capsules/{capsule['id']}", headers=headers)).status_code == 204
            frames = await on_b.events_of(capsule["id"], until="capsule.destroy")
        names = [frame.event for frame in frames]
        assert names[0] == "capsule.state.changed" and names[1] == "capsule.create" and names[-1] == "capsule.destroy"
        created = frames[1].json()
        assert created["sandbox"]["status"] == "running" and created["team_id"] == format_id(Kind.TEAM, team_id)
        got = (await http.get(f"/v1/capsules/{capsule['id']}", headers=headers)).json()
        got.pop("disk_used_mb", None)  # measured on the host for GET of one capsule only
        assert frames[-1].json()["sandbox"] == got
    finally:
        for thread in servers:
            await asyncio.to_thread(thread.stop)
