"""A host agent's life with a control plane, from the agent's side: `wrenn agent` joins with a one-time token and
keeps beating, and a create the control plane answered `starting` ends `error` when the boot fails later."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import stat
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.agent_process import AgentProcess, skip_without_gvisor, until
from wrenn_server.controlplane.ids import Kind, format_id
from wrenn_server.controlplane.services.bootstrap import ensure_admin_key

from .agent import Agent
from .harness import Harness, ServerThread, settings_for


@pytest.fixture
async def agent_processes(data_dir: Path, server: ServerThread) -> AsyncIterator[Callable[[], AgentProcess]]:
    """Makes `wrenn agent` processes with data directories of their own, joining the test control plane and
    beating twice a second; all stopped and purged at the end."""
    await skip_without_gvisor(data_dir)
    made: list[AgentProcess] = []

    def make() -> AgentProcess:
        made.append(AgentProcess.in_dir(data_dir, WRENN_CP_URL=server.base_url, WRENN_HEARTBEAT_SEC="0.5"))
        return made[-1]

    try:
        yield make
    finally:
        for handle in made:
            await handle.close()


async def host_of(http: httpx.AsyncClient, admin: dict[str, str], wire_id: str) -> dict[str, Any]:
    resp = await http.get("/v1/hosts", headers=admin)
    assert resp.status_code == 200, resp.text
    found: dict[str, Any] = next(host for host in resp.json() if host["id"] == wire_id)
    return found


@pytest.mark.runtime
async def test_an_agent_joins_with_a_one_time_token_keeps_beating_and_comes_back_on_its_credentials(
    http: httpx.AsyncClient, harness: Harness, agent_processes: Callable[[], AgentProcess]
) -> None:
    admin = {"X-API-Key": await ensure_admin_key(harness.sessionmaker, None)}
    team_id, api_key = await harness.team(byoc=True)
    headers = {"X-API-Key": api_key}
    host_id, token = await harness.pending_host(team_id)
    wire_id = format_id(Kind.HOST, host_id)
    assert (await host_of(http, admin, wire_id))["status"] == "pending"

    # Given only the control plane's URL and the token, the agent registers itself and goes online.
    agent = agent_processes()
    agent.start(WRENN_REGISTRATION_TOKEN=token)

    async def online() -> dict[str, Any] | None:
        assert agent.running(), agent.tail()
        host = await host_of(http, admin, wire_id)
        return host if host["status"] == "online" and agent.credentials.exists() else None

    host = await until(online, "the agent to register")
    assert host["address"] == agent.address
    assert host["cpu_cores"] == os.cpu_count() and host["arch"] == platform.machine() and host["memory_mb"] > 0
    creds = json.loads(agent.credentials.read_text())
    assert creds["host_id"] == wire_id and creds["cp_url"] == agent.env["WRENN_CP_URL"]
    assert stat.S_IMODE(agent.credentials.stat().st_mode) == 0o600  # it holds the host's secrets

    # Its heartbeats keep the host's last heartbeat moving.
    async def beat_after(seen: str) -> str | None:
        now = (await host_of(http, admin, wire_id))["last_heartbeat_at"]
        return str(now) if now != seen else None

    beat = await until(lambda: beat_after(host["last_heartbeat_at"]), "a heartbeat")
    beat = await until(lambda: beat_after(beat), "another heartbeat")

    # The control plane reaches the agent with what the registration gave both: the team's capsules run there.
    resp = await http.post("/v1/capsules", json={}, headers=headers)
    assert resp.status_code == 201 and resp.json()["status"] == "running", resp.text
    capsule_id = resp.json()["id"]
    sandbox_dirs = [p.name for p in (agent.dir / "sandboxes").iterdir() if (p / "state.json").exists()]
    assert len(sandbox_dirs) == 1  # on this agent, not another
    ran = await http.post(f"/v1/capsules/{capsule_id}/exec", json={"cmd": "echo", "args": ["hi"]}, headers=headers)
    assert ran.status_code == 200 and ran.json()["stdout"] == "hi\n", ran.text

    # The token was for one registration only: another agent presenting it is refused, says so, stops, and
    # leaves nothing behind; no host is added.
    before = sorted(h["id"] for h in (await http.get("/v1/hosts", headers=admin)).json())
    intruder = agent_processes()
    intruder.start(WRENN_REGISTRATION_TOKEN=token)
    assert await intruder.exited() != 0
    assert "refused the registration" in intruder.tail(), intruder.tail()
    assert "Traceback" not in intruder.tail(), intruder.tail()  # one line a person can act on
    assert not intruder.credentials.exists()
    assert intruder.leftovers() == []
    assert sorted(h["id"] for h in (await http.get("/v1/hosts", headers=admin)).json()) == before
    assert (await host_of(http, admin, wire_id))["status"] == "online"

    # Restarted with its environment unchanged (the used token still in it, as a service unit keeps it), the
    # agent comes back on its saved credentials: same host, beating, its capsule still served.
    assert await agent.stop() == 0, agent.tail()
    last = (await host_of(http, admin, wire_id))["last_heartbeat_at"]  # the stopped agent's last word
    agent.start(WRENN_REGISTRATION_TOKEN=token)

    async def beating_again() -> str | None:
        assert agent.running(), agent.tail()
        return await beat_after(last)

    await until(beating_again, "a heartbeat of the restarted agent")
    assert sorted(h["id"] for h in (await http.get("/v1/hosts", headers=admin)).json()) == before
    assert json.loads(agent.credentials.read_text())["host_id"] == wire_id

    async def served() -> bool | None:
        ran = await http.post(f"/v1/capsules/{capsule_id}/exec", json={"cmd": "true"}, headers=headers)
        return True if ran.status_code == 200 and ran.json()["exit_code"] == 0 else None

    await until(served, "the capsule to be served again")
    assert (await http.delete(f"/v1/capsules/{capsule_id}", headers=headers)).status_code == 204
    assert (await http.get(f"/v1/capsules/{capsule_id}", headers=headers)).json()["status"] == "stopped"


async def read_events(
    lines: AsyncIterator[str], wanted: Callable[[dict[str, Any]], bool], seen: list[dict[str, Any]]
) -> dict[str, Any]:
    """Read the `data:` lines of an event stream (appended to `seen`) until one is `wanted`."""
    async for line in lines:
        if line.startswith("data: "):
            seen.append(json.loads(line[len("data: ") :]))
            if wanted(seen[-1]):
                return seen[-1]
    raise AssertionError(f"the stream ended first; seen: {seen}")


async def test_a_create_answered_starting_that_fails_later_ends_in_error_with_its_reason(
    http: httpx.AsyncClient,
    harness: Harness,
    own_team: tuple[uuid.UUID, dict[str, str]],
    agent: Agent,
    tmp_path: Path,
) -> None:
    """A control plane that waits 0 s answers 201 `starting`; the boot then fails on the host (the template
    has no init). The capsule ends `error`, the failure reaches the caller's event stream with the runtime's
    reason, the row keeps that reason, and the host keeps nothing of it."""
    team_id, headers = own_team
    await agent.template_without_init(harness, team_id, "broken-later")
    before = set(await agent.sandboxes())
    impatient = ServerThread(settings_for(tmp_path, harness.settings.database_url, create_wait_sec=0))
    await asyncio.to_thread(impatient.start)
    try:
        async with (
            httpx.AsyncClient(base_url=impatient.base_url, timeout=120) as other,
            other.stream("GET", "/v1/events/stream", headers=headers) as stream,
        ):
            seen: list[dict[str, Any]] = []
            lines = stream.aiter_lines()
            await read_events(lines, lambda e: e["event"] == "connected", seen)
            resp = await other.post("/v1/capsules", json={"template": "broken-later"}, headers=headers)
            assert resp.status_code == 201, resp.text
            assert resp.json()["status"] == "starting"
            capsule_id = resp.json()["id"]

            def created(event: dict[str, Any]) -> bool:
                return event["event"] == "capsule.create" and event["resource"]["id"] == capsule_id

            event = await asyncio.wait_for(read_events(lines, created, seen), 120)
    finally:
        await asyncio.to_thread(impatient.stop)
    assert event["outcome"] == "error", event
    reason = event["error"]
    assert reason.startswith("capsule failed to start"), reason
    assert "/usr/local/bin/wrenn-init" in reason  # the runtime's own words
    changes = [e["metadata"] for e in seen if e["event"] == "capsule.state.changed"]
    assert {"from": "starting", "to": "error", "reason": reason} in changes, seen

    # Seen through the other control plane on the same database: `error`, for good.
    got = (await http.get(f"/v1/capsules/{capsule_id}", headers=headers)).json()
    assert got["status"] == "error" and "started_at" not in got, got
    assert got["metadata"]["end_reason"] == reason
    row = await harness.row(capsule_id)
    assert (row.status, row.error) == ("error", reason)
    assert (await http.get("/v1/capsules", headers=headers)).json() == []
    assert set(await agent.sandboxes()) == before
    assert capsule_id not in await agent.containers()
    assert not (agent.dir / "sandboxes" / capsule_id).exists()
    assert (await http.delete(f"/v1/capsules/{capsule_id}", headers=headers)).status_code == 204
    assert (await http.get(f"/v1/capsules/{capsule_id}", headers=headers)).json()["status"] == "error"
