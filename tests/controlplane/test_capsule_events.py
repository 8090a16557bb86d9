"""The events a capsule's life makes on `GET /v1/events/stream`, over real HTTP with the real host agent and
the real SDK's `events.stream()`: create, destroy, pause, resume, a failed create, the reconciler's moves."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import update
from wrenn import WrennClient
from wrenn.models import SSEEvent
from wrenn.models import Status as SdkStatus

from wrenn_server.controlplane.db.models import Host
from wrenn_server.controlplane.db.types import utcnow
from wrenn_server.controlplane.ids import Kind, format_id
from wrenn_server.controlplane.services.agents import AgentPool, HostRef
from wrenn_server.controlplane.services.bootstrap import ensure_admin_key
from wrenn_server.controlplane.services.events import (
    CapsuleEvents,
    InProcessBus,
)
from wrenn_server.controlplane.services.lifecycle import DESTROYED
from wrenn_server.controlplane.services.reconciler import HOST_SILENT, NOT_ON_HOST, Reconciler
from wrenn_server.controlplane.state import capsule_json

from .agent import Agent
from .harness import AGENT_TOKEN, Harness, ServerThread
from .pg import free_port
from .sse import (
    Frame,
    bodies_of,
    create,
    key_id,
    open_stream,
)


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
    # A create whose control plane went away before the host had it (this one boots nothing): settled at once
    # with no transition grace, as under `wrenn up`.
    never_started = await harness.capsule(team_id, "starting", live_host)
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
            seen = [await subscription.next(timeout=5) for _ in range(6)]
    finally:
        await pool.close()
    finished = [event.payload() for event in seen if event is not None and event.name == "capsule.destroy"]
    assert [(body["resource"]["id"], body["outcome"], body["actor"]) for body in finished] == [
        (cut_short, "success", {"type": "system"})
    ]
    bodies = {
        event.resource_id: event.payload() for event in seen if event is not None and event.name != "capsule.destroy"
    }
    assert set(bodies) == {never, never_started, cut_short, *lost}
    expected = {
        never: ("running", "stopped"),
        never_started: ("starting", "stopped"),
        cut_short: ("stopping", "stopped"),
        **{wire: (status, "missing") for wire, status in lost.items()},
    }
    reasons = {
        never: NOT_ON_HOST,
        never_started: NOT_ON_HOST,
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
