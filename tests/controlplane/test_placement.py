"""Where a snapshot template's capsules go: only to a host whose runtime restores the guest state it holds, as
the host's agent measured and reported it; a clear refusal when no host can."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from tests.agent_process import AgentProcess, until
from tests.skips import skip_missing
from wrenn_server.controlplane.db.models import Host, Template
from wrenn_server.controlplane.ids import Kind, format_id, new_uuid
from wrenn_server.controlplane.services.bootstrap import ensure_admin_key
from wrenn_server.hostagent.runtimes import build_runtime

from .harness import Harness
from .test_agent_lifecycle import agent_processes, host_of
from .test_errors_auth import assert_error
from .test_hosts import GVISOR

__all__ = ["agent_processes"]

MICROVM = {
    **GVISOR,
    "guest_kernel": True,
    "memory_file": True,
    "layered_files": False,
    "guest_capabilities_limited": False,
    "restores": ["microvm"],
}


async def snapshot_row(harness: Harness, team_id: uuid.UUID, host_id: uuid.UUID, runtime: str) -> str:
    """A snapshot template of the team held by `host_id`, of a `runtime` guest; answers its name."""
    name = f"snap-{uuid.uuid4().hex[:8]}"
    async with harness.sessionmaker() as session:
        meta = {"host_id": str(host_id), "runtime": runtime}
        session.add(Template(id=new_uuid(), name=name, type="snapshot", team_id=team_id, meta=meta))
        await session.commit()
    return name


async def test_a_snapshot_no_online_host_can_restore_is_refused_with_the_reason(
    http: httpx.AsyncClient, harness: Harness
) -> None:
    team_id, api_key = await harness.team(byoc=True)
    headers = {"X-API-Key": api_key}
    host_id = await harness.host(team_id, runtime="microvm", capabilities=MICROVM)  # nobody listens there
    name = await snapshot_row(harness, team_id, host_id, "gvisor")
    refused = await http.post("/v1/capsules", json={"template": name}, headers=headers)
    message = assert_error(refused, 503, "no_hosts_available")
    assert f"template {name!r}" in message and "holds a gvisor guest" in message, message
    assert f"{format_id(Kind.HOST, host_id)} runs microvm" in message and "WRENN_RUNTIME=gvisor" in message, message
    assert await harness.count_capsules(team_id) == 0  # refused before any capsule was made
    # Once its host reports a runtime that restores it, the scheduler places it there (whose agent is not up).
    async with harness.sessionmaker() as session:
        await session.execute(update(Host).where(Host.id == host_id).values(runtime="gvisor", capabilities=GVISOR))
        await session.commit()
    assert_error(await http.post("/v1/capsules", json={"template": name}, headers=headers), 503, "host_unavailable")
    assert [row.host_id for row in await harness.rows(team_id)] == [host_id]


@pytest.mark.runtime
async def test_snapshots_start_only_on_a_host_whose_runtime_restores_them(
    http: httpx.AsyncClient, harness: Harness, data_dir: Path, agent_processes: Callable[[], AgentProcess]
) -> None:
    """Two real agents, one on gVisor and one on microVMs, register with what their runtimes measured (shown by
    the hosts API); each snapshot template's capsules start on the host that holds it. Restarted on microVMs, the
    gVisor host reports so at once, and its gVisor snapshot is refused, until it runs gVisor again."""
    expected: dict[str, dict[str, Any]] = {}
    for runtime in ("gvisor", "microvm"):
        probe = await build_runtime(runtime, data_dir).probe()
        if not probe.available:
            skip_missing(f"runtime {runtime}", f"it cannot run here: {probe.reason}")
        expected[runtime] = probe.capabilities.to_wire()
    admin = {"X-API-Key": await ensure_admin_key(harness.sessionmaker, None)}
    team_id, api_key = await harness.team(byoc=True)
    headers = {"X-API-Key": api_key}
    agents: dict[str, AgentProcess] = {}
    hosts: dict[str, str] = {}  # runtime → host wire id
    for runtime in ("gvisor", "microvm"):
        host_id, token = await harness.pending_host(team_id)
        agents[runtime] = agent_processes()
        agents[runtime].start(WRENN_REGISTRATION_TOKEN=token, WRENN_RUNTIME=runtime, WRENN_POOL_SIZE="0")
        hosts[runtime] = format_id(Kind.HOST, host_id)

    async def reporting(runtime: str, wire_id: str) -> dict[str, Any] | None:
        for agent in agents.values():
            assert agent.running(), agent.tail()
        host = await host_of(http, admin, wire_id)
        return host if host["status"] == "online" and host.get("runtime") == runtime else None

    for runtime, wire_id in hosts.items():
        host = await until(lambda r=runtime, w=wire_id: reporting(r, w), f"the {runtime} agent to register")
        assert host["capabilities"] == expected[runtime]

    # A capsule on each host (the second goes to the host the first left emptier), a snapshot of each.
    capsules = []
    for _ in range(2):
        resp = await http.post("/v1/capsules", json={}, headers=headers)
        assert resp.status_code == 201 and resp.json()["status"] == "running", resp.text
        capsules.append(resp.json()["id"])
    templates: dict[str, str] = {}  # runtime → template name
    for capsule in capsules:
        on = format_id(Kind.HOST, (await harness.row(capsule)).host_id)
        runtime = next(name for name, wire_id in hosts.items() if wire_id == on)
        name = f"on-{runtime}-{uuid.uuid4().hex[:6]}"
        made = await http.post("/v1/snapshots", json={"sandbox_id": capsule, "name": name}, headers=headers)
        assert made.status_code == 201, made.text
        templates[runtime] = name
        assert (await http.delete(f"/v1/capsules/{capsule}", headers=headers)).status_code == 204
    assert set(templates) == {"gvisor", "microvm"}

    async def start(template: str) -> str:
        resp = await http.post("/v1/capsules", json={"template": template}, headers=headers)
        assert resp.status_code == 201 and resp.json()["status"] == "running", resp.text
        capsule: str = resp.json()["id"]
        host = format_id(Kind.HOST, (await harness.row(capsule)).host_id)
        assert (await http.delete(f"/v1/capsules/{capsule}", headers=headers)).status_code == 204
        return host

    for runtime, template in templates.items():
        assert await start(template) == hosts[runtime]

    # The gVisor host's agent comes back on microVMs: its heartbeat says so, and its gVisor snapshot is refused.
    gvisor_host = hosts["gvisor"]
    await agents["gvisor"].stop()
    agents["gvisor"].start(WRENN_RUNTIME="microvm", WRENN_POOL_SIZE="0")
    host = await until(lambda: reporting("microvm", gvisor_host), "the agent to report its new runtime")
    assert host["capabilities"]["restores"] == ["microvm"]
    before = len(await harness.rows(team_id))
    refused = await http.post("/v1/capsules", json={"template": templates["gvisor"]}, headers=headers)
    message = assert_error(refused, 503, "no_hosts_available")
    assert "holds a gvisor guest" in message and f"{gvisor_host} runs microvm" in message, message
    assert len(await harness.rows(team_id)) == before
    assert await start(templates["microvm"]) == hosts["microvm"]  # the other host's snapshot still starts

    # Back on gVisor, the snapshot starts there again: the template was never the trouble.
    await agents["gvisor"].stop()
    agents["gvisor"].start(WRENN_RUNTIME="gvisor", WRENN_POOL_SIZE="0")
    await until(lambda: reporting("gvisor", gvisor_host), "the agent to report gVisor again")
    assert await start(templates["gvisor"]) == gvisor_host
