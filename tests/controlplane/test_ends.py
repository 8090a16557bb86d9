"""Every end keeps its files and says why (docs/lifecycle.md), against the real agent: a capsule that ended in
`error` keeps its disk on its host through the reconciler's passes until its retention ends, resumes from that
disk, and a snapshot left half-way by a control plane that died is settled from its host."""

from __future__ import annotations

import uuid

import httpx

from tests.agent_process import until
from wrenn_server.controlplane.services.agents import AgentPool, HostRef
from wrenn_server.controlplane.services.reconciler import Reconciler
from wrenn_server.proto._generated import hostagent_pb2 as pb

from .agent import Agent
from .harness import AGENT_TOKEN, Harness
from .test_errors_auth import assert_error
from .test_reconciler import byoc_team, create, end_reason, status_of


async def reconcile(harness: Harness, host_id: uuid.UUID, agent: Agent, retention_sec: float) -> None:
    pool = AgentPool()
    reconciler = Reconciler(
        harness.sessionmaker,
        pool,
        interval=3600,
        host_stale_sec=3600,
        is_booting=lambda _: False,
        transition_grace_sec=0,
        retention_sec=retention_sec,
    )
    try:
        await reconciler.reconcile_host(HostRef(host_id, agent.address, AGENT_TOKEN))
    finally:
        await pool.close()


async def kill(agent: Agent, wire_id: str) -> str:
    """The capsule's guest killed on its host; answers the reason the agent gives."""
    killed = await agent.runsc("kill", agent.guest_name(wire_id), "KILL")
    assert killed.returncode == 0, killed.stderr

    async def reported() -> str | None:
        info = (await agent.sandboxes())[wire_id]
        return str(info.error) if info.status == pb.SANDBOX_STATUS_ERROR else None

    return await until(reported, "the agent to notice the guest is gone")


async def sh(http: httpx.AsyncClient, headers: dict[str, str], wire_id: str, script: str) -> httpx.Response:
    return await http.post(
        f"/v1/capsules/{wire_id}/exec", json={"cmd": "/bin/sh", "args": ["-c", script]}, headers=headers
    )


async def test_an_ended_capsule_keeps_its_disk_until_its_retention_ends_and_resumes_from_it(
    http: httpx.AsyncClient, harness: Harness, agent: Agent, cleanup: list[str]
) -> None:
    _, host_id, headers = await byoc_team(harness, agent)
    wire_id = await create(http, headers, cleanup)
    wrote = await sh(http, headers, wire_id, "echo kept > /root/mark && sync")
    assert wrote.status_code == 200 and wrote.json()["exit_code"] == 0, wrote.text
    workdir = agent.dir / "sandboxes" / agent.guest_name(wire_id)
    reason = await kill(agent, wire_id)

    for _ in range(2):  # passes within the retention: the row says why, the host keeps the disk
        await reconcile(harness, host_id, agent, retention_sec=3600)
    assert await status_of(harness, wire_id) == "error"
    assert await end_reason(http, headers, wire_id) == reason
    assert wire_id in await agent.sandboxes() and workdir.is_dir()
    refused = await sh(http, headers, wire_id, "true")  # refused by the row, or by the agent: both say why
    message = assert_error(refused, 409, "invalid_state")
    assert "not running" in message and message.endswith(f": {reason}"), message

    # Snapshotted as it is: its files only; it stays `error`, and a capsule of the template has them.
    name = f"ended-{uuid.uuid4().hex[:8]}"
    snap = await http.post("/v1/snapshots", json={"sandbox_id": wire_id, "name": name}, headers=headers)
    assert snap.status_code in (200, 201) and snap.json()["name"] == name, snap.text
    assert await status_of(harness, wire_id) == "error"
    child = await http.post("/v1/capsules", json={"template": name}, headers=headers)
    assert child.status_code == 201 and child.json()["status"] == "running", child.text
    cleanup.append(child.json()["id"])
    read = await sh(http, headers, child.json()["id"], "cat /root/mark")
    assert read.status_code == 200 and read.json()["stdout"] == "kept\n", read.text

    resumed = await http.post(f"/v1/capsules/{wire_id}/resume", headers=headers)
    assert resumed.status_code == 200 and resumed.json()["status"] == "running", resumed.text
    assert "end_reason" not in resumed.json()["metadata"]
    read = await sh(http, headers, wire_id, "cat /root/mark")
    assert read.status_code == 200 and read.json()["stdout"] == "kept\n", read.text

    # Once its retention is over, the reconciler collects the disk of a capsule that ended.
    reason = await kill(agent, wire_id)
    await reconcile(harness, host_id, agent, retention_sec=3600)
    assert await status_of(harness, wire_id) == "error"
    await reconcile(harness, host_id, agent, retention_sec=0)
    assert wire_id not in await agent.sandboxes() and not workdir.exists()
    assert (await harness.row(wire_id)).error == reason
    gone = await http.post(f"/v1/capsules/{wire_id}/resume", headers=headers)
    assert assert_error(gone, 409, "invalid_state") == "the sandbox ended and its host no longer keeps its disk"
    assert await end_reason(http, headers, wire_id) == reason


async def test_a_snapshot_whose_control_plane_died_is_settled_from_the_host(
    http: httpx.AsyncClient, harness: Harness, agent: Agent, cleanup: list[str]
) -> None:
    _, host_id, headers = await byoc_team(harness, agent)
    wire_id = await create(http, headers, cleanup)
    await harness.set_status(wire_id, "snapshotting")  # as a control plane that died mid-snapshot leaves it
    await reconcile(harness, host_id, agent, retention_sec=3600)
    assert await status_of(harness, wire_id) == "running"
    ran = await sh(http, headers, wire_id, "true")
    assert ran.status_code == 200 and ran.json()["exit_code"] == 0, ran.text
