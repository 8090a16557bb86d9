"""The reconciler against the real agent: capsule rows follow what the host really runs."""

from __future__ import annotations

import json
import os
import signal
import uuid
from datetime import timedelta

import httpx
from sqlalchemy import update

from tests.agent_process import until
from wrenn_server.controlplane.db.models import Host
from wrenn_server.controlplane.db.types import utcnow
from wrenn_server.controlplane.services.agents import AgentPool, HostRef
from wrenn_server.controlplane.services.events import CapsuleEvents, InProcessBus
from wrenn_server.controlplane.services.lifecycle import DESTROYED
from wrenn_server.controlplane.services.reconciler import HOST_SILENT, NOT_ON_HOST, Reconciler
from wrenn_server.controlplane.state import capsule_json
from wrenn_server.proto._generated import hostagent_pb2 as pb

from .agent import Agent
from .harness import AGENT_TOKEN, Harness
from .test_errors_auth import assert_error


def reconciler(harness: Harness, pool: AgentPool, stale: float = 3600, grace: float = 0) -> Reconciler:
    """By default the only control plane of its database (as `wrenn up`): no other one is half-way through
    a pause, resume or destroy, so those rows are settled at once."""
    return Reconciler(
        harness.sessionmaker,
        pool,
        interval=3600,
        host_stale_sec=stale,
        is_booting=lambda _: False,
        transition_grace_sec=grace,
    )


async def reconcile(harness: Harness, host_id: uuid.UUID, agent: Agent, grace: float = 0) -> None:
    pool = AgentPool()
    try:
        await reconciler(harness, pool, grace=grace).reconcile_host(HostRef(host_id, agent.address, AGENT_TOKEN))
    finally:
        await pool.close()


async def status_of(harness: Harness, wire_id: str) -> str:
    return (await harness.row(wire_id)).status


async def end_reason(http: httpx.AsyncClient, headers: dict[str, str], wire_id: str) -> str | None:
    """Why the capsule ended, as `GET /v1/capsules/{id}` says it (None: it does not say)."""
    resp = await http.get(f"/v1/capsules/{wire_id}", headers=headers)
    assert resp.status_code == 200, resp.text
    reason: str | None = resp.json()["metadata"].get("end_reason")
    return reason


async def create(http: httpx.AsyncClient, headers: dict[str, str], cleanup: list[str]) -> str:
    resp = await http.post("/v1/capsules", json={}, headers=headers)
    assert resp.status_code == 201 and resp.json()["status"] == "running", resp.text
    cleanup.append(resp.json()["id"])
    return str(resp.json()["id"])


async def byoc_team(harness: Harness, agent: Agent) -> tuple[uuid.UUID, uuid.UUID, dict[str, str]]:
    team_id, api_key = await harness.team(byoc=True)
    host_id = await harness.host(team_id, address=agent.address, **agent.reported())  # as its heartbeats say
    return team_id, host_id, {"X-API-Key": api_key}


async def test_rows_follow_the_agent(
    http: httpx.AsyncClient, harness: Harness, agent: Agent, cleanup: list[str]
) -> None:
    team_id, host_id, headers = await byoc_team(harness, agent)
    alive = await create(http, headers, cleanup)
    gone = await create(http, headers, cleanup)
    back = await create(http, headers, cleanup)
    orphan = await create(http, headers, cleanup)
    orphan_container = agent.guest_name(orphan)
    await agent.destroy(gone)  # the host lost it behind the control plane's back
    await harness.set_status(back, "missing")  # as if its host had been silent for a while
    await harness.set_status(orphan, "stopped")  # as if a destroy had not reached the host
    never = await harness.capsule(team_id, "running", host_id)  # a row for a capsule the host never had
    lost = await harness.capsule(team_id, "missing", host_id)
    cut_short = await harness.capsule(team_id, "stopping", host_id)

    await reconcile(harness, host_id, agent)

    assert await status_of(harness, alive) == "running"
    assert await status_of(harness, gone) == "stopped"
    assert await status_of(harness, back) == "running"
    assert await status_of(harness, orphan) == "stopped"
    assert await status_of(harness, never) == "stopped"
    assert await status_of(harness, lost) == "stopped"
    assert await status_of(harness, cut_short) == "stopped"
    # Each says why it ended: the host does not have it, or (a destroy cut short) it was destroyed.
    for wire_id in (gone, never, lost):
        assert await end_reason(http, headers, wire_id) == NOT_ON_HOST, wire_id
    assert await end_reason(http, headers, cut_short) == DESTROYED
    assert await end_reason(http, headers, back) is None  # found alive again: no reason of its loss left
    on_host = await agent.sandboxes()
    assert alive in on_host and back in on_host
    assert orphan not in on_host  # destroyed on the host
    assert orphan_container not in await agent.containers()
    listed = {c["id"]: c["status"] for c in (await http.get("/v1/capsules", headers=headers)).json()}
    assert listed == {alive: "running", back: "running"}
    ran = await http.post(f"/v1/capsules/{back}/exec", json={"cmd": "true"}, headers=headers)
    assert ran.status_code == 200 and ran.json()["exit_code"] == 0

    await reconcile(harness, host_id, agent)  # a second pass changes nothing
    assert [await status_of(harness, w) for w in (alive, gone, back, orphan, never)] == [
        "running",
        "stopped",
        "running",
        "stopped",
        "stopped",
    ]


async def test_a_young_destroy_is_left_to_the_control_plane_making_it(
    harness: Harness, agent: Agent, cleanup: list[str]
) -> None:
    """With other control planes on the database, a `stopping` row may be a destroy still under way in one of
    them, which ends it and says so (`capsule.destroy`): the reconciler leaves it alone for the grace period,
    then settles it from the host."""
    team_id, host_id, _ = await byoc_team(harness, agent)
    underway = await harness.capsule(team_id, "stopping", host_id)
    await reconcile(harness, host_id, agent, grace=300)
    assert await status_of(harness, underway) == "stopping"
    await reconcile(harness, host_id, agent, grace=0)
    assert await status_of(harness, underway) == "stopped"


async def test_capsule_that_died_with_the_agent_is_error(
    http: httpx.AsyncClient, harness: Harness, agent: Agent, cleanup: list[str]
) -> None:
    """A capsule killed while its agent was down is reported `error` by the restarted agent; its row
    follows with the agent's reason. A capsule that outlived the restart is re-adopted and keeps working."""
    _, host_id, headers = await byoc_team(harness, agent)
    dies = await create(http, headers, cleanup)
    survives = await create(http, headers, cleanup)

    async def kill() -> None:
        killed = await agent.runsc("kill", agent.guest_name(dies), "KILL")
        assert killed.returncode == 0, killed.stderr

    await agent.restart(while_down=kill)
    info = (await agent.sandboxes())[dies]
    assert info.status == pb.SANDBOX_STATUS_ERROR

    await reconcile(harness, host_id, agent)

    row = await harness.row(dies)
    assert (row.status, row.error) == ("error", info.error)
    assert "stopped while the host agent was not running" in info.error
    assert await end_reason(http, headers, dies) == info.error
    resp = await http.post(f"/v1/capsules/{dies}/exec", json={"cmd": "true"}, headers=headers)
    assert assert_error(resp, 409, "invalid_state") == f"sandbox is not running (status: error): {info.error}"
    assert [c["id"] for c in (await http.get("/v1/capsules", headers=headers)).json()] == [survives]

    assert await status_of(harness, survives) == "running"
    body = {"cmd": "/bin/sh", "args": ["-c", "echo still here"]}
    ran = await http.post(f"/v1/capsules/{survives}/exec", json=body, headers=headers)
    assert ran.status_code == 200 and ran.json()["stdout"] == "still here\n", ran.text


async def test_silent_host_goes_unreachable(harness: Harness) -> None:
    team_id, _ = await harness.team(byoc=True)
    host_id = await harness.host(team_id)
    running = await harness.capsule(team_id, "running", host_id)
    paused = await harness.capsule(team_id, "paused", host_id)
    async with harness.sessionmaker() as session:
        await session.execute(
            update(Host).where(Host.id == host_id).values(last_heartbeat_at=utcnow() - timedelta(hours=5))
        )
        await session.commit()
    pool = AgentPool()
    try:
        await reconciler(harness, pool, stale=4 * 3600).mark_stale_hosts()
    finally:
        await pool.close()
    async with harness.sessionmaker() as session:
        host = await session.get(Host, host_id, populate_existing=True)
        assert host is not None and host.status == "unreachable"
    assert await status_of(harness, running) == "missing"
    assert (await harness.row(running)).error == HOST_SILENT.format(seconds=4 * 3600)
    assert await status_of(harness, paused) == "paused"


async def test_a_guest_killed_on_the_host_says_why_it_ended(
    http: httpx.AsyncClient, harness: Harness, agent: Agent, cleanup: list[str]
) -> None:
    """The runsc sandbox process of a running capsule is killed on the host: the agent notices the guest is
    gone, and the capsule ends `error` with that reason in its row, its JSON and its event."""
    _, host_id, headers = await byoc_team(harness, agent)
    wire_id = await create(http, headers, cleanup)
    ran = await http.post(f"/v1/capsules/{wire_id}/exec", json={"cmd": "true"}, headers=headers)
    assert ran.status_code == 200 and ran.json()["exit_code"] == 0, ran.text
    state = await agent.runsc("state", agent.guest_name(wire_id))
    assert state.returncode == 0, state.stderr
    pid = int(json.loads(state.stdout)["pid"])
    os.kill(pid, 0)  # the guest's sandbox process is there
    assert await end_reason(http, headers, wire_id) is None

    os.kill(pid, signal.SIGKILL)

    async def reported() -> str | None:
        info = (await agent.sandboxes())[wire_id]
        return str(info.error) if info.status == pb.SANDBOX_STATUS_ERROR else None

    reason = await until(reported, "the agent to notice the guest is gone")
    assert "stopped on its own" in reason
    bus = InProcessBus()
    pool = AgentPool()
    reconciler = Reconciler(
        harness.sessionmaker,
        pool,
        interval=3600,
        host_stale_sec=3600,
        is_booting=lambda _: False,
        events=CapsuleEvents(bus, harness.sessionmaker, capsule_json),
        transition_grace_sec=0,
    )
    try:
        with bus.subscribe() as subscription:
            await reconciler.reconcile_host(HostRef(host_id, agent.address, AGENT_TOKEN))
            event = await subscription.next(timeout=5)
    finally:
        await pool.close()

    row = await harness.row(wire_id)
    assert (row.status, row.error) == ("error", reason)
    assert await end_reason(http, headers, wire_id) == reason
    assert event is not None
    body = event.payload()
    assert body["resource"]["id"] == wire_id
    assert body["metadata"] == {"from": "running", "to": "error", "reason": reason}
    assert body["error"] == reason
    assert body["sandbox"]["status"] == "error" and body["sandbox"]["metadata"]["end_reason"] == reason
