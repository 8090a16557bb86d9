"""Capsule create/list/get/destroy: validation, placement, lifecycle (docs/api.md, "Capsules"; docs/lifecycle.md)."""

from __future__ import annotations

import asyncio
import ipaddress
import uuid
from pathlib import Path

import httpx
import pytest
from wrenn.models import Capsule as SdkCapsule

from wrenn_server import __version__
from wrenn_server.controlplane.ids import Kind, format_id
from wrenn_server.envd import __version__ as ENVD_VERSION
from wrenn_server.proto._generated import hostagent_pb2 as pb

from .agent import Agent, namespaces, slot_namespaces
from .harness import Harness, ServerThread, settings_for
from .test_errors_auth import assert_error


async def placeable_team(harness: Harness) -> tuple[uuid.UUID, dict[str, str]]:
    """A BYOC team with an online host that fits any default capsule (nobody listens at its address): a
    request that passes validation gets a row and fails on the host, so a refused one must leave no row."""
    team_id, api_key = await harness.team(byoc=True)
    await harness.host(team_id, cpu_cores=4, memory_mb=8192)
    return team_id, {"X-API-Key": api_key}


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".hidden", "x" * 65, "white space"])
async def test_unsafe_template_name_is_400(http: httpx.AsyncClient, harness: Harness, name: str) -> None:
    team_id, headers = await placeable_team(harness)
    resp = await http.post("/v1/capsules", json={"template": name}, headers=headers)
    if name == "":
        # An empty name means "the default template": the request is valid and goes on to the host.
        assert_error(resp, 503, "host_unavailable")
        assert [row.template for row in await harness.rows(team_id)] == ["minimal"]
        return
    assert_error(resp, 400, "invalid_request")
    assert await harness.count_capsules(team_id) == 0


async def test_unknown_template_is_404(http: httpx.AsyncClient, harness: Harness) -> None:
    team_id, headers = await placeable_team(harness)
    resp = await http.post("/v1/capsules", json={"template": "no-such-template"}, headers=headers)
    assert assert_error(resp, 404, "not_found") == "template not found"
    assert await harness.count_capsules(team_id) == 0


@pytest.mark.parametrize(
    "body",
    [
        {"vcpus": -1},
        {"memory_mb": -5},
        {"timeout_sec": -1},
        {"disk_size_mb": 2**40},
        {"timeout_sec": 2**31},
        {"metadata": {"kernel_version": "x"}},
        {"metadata": {"bad key": "x"}},
        {"metadata": {"k": "v" * 65}},
        {"metadata": {f"k{i}": "v" for i in range(21)}},
        {"metadata": {"k": 1}},
    ],
)
async def test_invalid_create_is_400(http: httpx.AsyncClient, harness: Harness, body: dict[str, object]) -> None:
    team_id, headers = await placeable_team(harness)
    assert_error(await http.post("/v1/capsules", json=body, headers=headers), 400, "invalid_request")
    assert await harness.count_capsules(team_id) == 0


async def test_no_hosts_is_503_without_row(http: httpx.AsyncClient, harness: Harness) -> None:
    for byoc in (False, True):
        team_id, api_key = await harness.team(byoc=byoc)
        resp = await http.post("/v1/capsules", json={}, headers={"X-API-Key": api_key})
        assert_error(resp, 503, "no_hosts_available")
        assert await harness.count_capsules(team_id) == 0


async def test_offline_hosts_do_not_count(http: httpx.AsyncClient, harness: Harness) -> None:
    team_id, api_key = await harness.team(byoc=True)
    await harness.host(team_id, status="unreachable")
    await harness.host(team_id, status="pending")
    assert_error(
        await http.post("/v1/capsules", json={}, headers={"X-API-Key": api_key}), 503, "no_hosts_available"
    )


async def test_beyond_any_host_is_400(http: httpx.AsyncClient, harness: Harness) -> None:
    team_id, api_key = await harness.team(byoc=True)
    await harness.host(team_id, cpu_cores=4, memory_mb=8192)
    for body in ({"vcpus": 64}, {"memory_mb": 65536}):
        resp = await http.post("/v1/capsules", json=body, headers={"X-API-Key": api_key})
        assert "more than any online host" in assert_error(resp, 400, "invalid_request")
    assert await harness.count_capsules(team_id) == 0


async def test_less_memory_than_a_guest_needs_is_400(http: httpx.AsyncClient, harness: Harness) -> None:
    team_id, api_key = await harness.team(byoc=True)
    await harness.host(team_id, cpu_cores=4, memory_mb=8192)
    resp = await http.post("/v1/capsules", json={"memory_mb": 64}, headers={"X-API-Key": api_key})
    assert "at least 128" in assert_error(resp, 400, "invalid_request")
    assert await harness.count_capsules(team_id) == 0


async def test_create_refuses_past_the_documented_limits(http: httpx.AsyncClient, harness: Harness) -> None:
    """The numbers `/openapi.json` states for a create are the ones the server applies, and its message says them."""
    team_id, headers = await placeable_team(harness)
    document = (await http.get("/openapi.json")).json()
    memory = document["components"]["schemas"]["CreateCapsule"]["properties"]["memory_mb"]["anyOf"][0]
    least = int(next(part["minimum"] for part in memory["anyOf"] if "minimum" in part))
    most = int(memory["maximum"])
    resp = await http.post("/v1/capsules", json={"memory_mb": least - 1}, headers=headers)
    assert f"at least {least} MB" in assert_error(resp, 400, "invalid_request")
    resp = await http.post("/v1/capsules", json={"memory_mb": most + 1}, headers=headers)
    assert assert_error(resp, 400, "invalid_request") == f"invalid field 'memory_mb': must be at most {most}"
    resp = await http.post("/v1/capsules", json={"metadata": {"agent_version": "x"}}, headers=headers)
    assert "'agent_version' is reserved" in assert_error(resp, 400, "invalid_request")
    assert await harness.count_capsules(team_id) == 0


async def test_full_host_is_503(http: httpx.AsyncClient, harness: Harness) -> None:
    team_id, api_key = await harness.team(byoc=True)
    host_id = await harness.host(team_id, cpu_cores=4, memory_mb=1024)
    await harness.capsule(team_id, "running", host_id)  # holds 512 MB
    resp = await http.post("/v1/capsules", json={"memory_mb": 1000}, headers={"X-API-Key": api_key})
    assert_error(resp, 503, "no_hosts_available")


async def test_unreachable_agent_fails_create(http: httpx.AsyncClient, harness: Harness) -> None:
    """The host row is online but nothing listens at its address: 503 and the row ends `error`."""
    team_id, api_key = await harness.team(byoc=True)
    await harness.host(team_id)
    resp = await http.post("/v1/capsules", json={}, headers={"X-API-Key": api_key})
    assert_error(resp, 503, "host_unavailable")
    rows = await http.get("/v1/capsules", headers={"X-API-Key": api_key})
    assert rows.json() == []  # error rows are not listed
    assert await harness.count_capsules(team_id) == 1


async def test_destroy_is_idempotent(http: httpx.AsyncClient, harness: Harness) -> None:
    team_id, api_key = await harness.team()
    headers = {"X-API-Key": api_key}
    for status in ("stopped", "error"):
        capsule = await harness.capsule(team_id, status)
        for _ in range(2):
            assert (await http.delete(f"/v1/capsules/{capsule}", headers=headers)).status_code == 204
        assert (await http.get(f"/v1/capsules/{capsule}", headers=headers)).json()["status"] == status


async def test_destroy_with_lost_host_still_stops(http: httpx.AsyncClient, harness: Harness) -> None:
    team_id, api_key = await harness.team(byoc=True)
    host_id = await harness.host(team_id)  # nobody listens there
    capsule = await harness.capsule(team_id, "running", host_id)
    headers = {"X-API-Key": api_key}
    assert (await http.delete(f"/v1/capsules/{capsule}", headers=headers)).status_code == 204
    assert (await http.get(f"/v1/capsules/{capsule}", headers=headers)).json()["status"] == "stopped"


async def test_list_excludes_finished_newest_first(http: httpx.AsyncClient, harness: Harness) -> None:
    team_id, api_key = await harness.team()
    visible = [await harness.capsule(team_id, s) for s in ("running", "paused", "missing")]
    for status in ("stopped", "error"):
        await harness.capsule(team_id, status)
    resp = await http.get("/v1/capsules", headers={"X-API-Key": api_key})
    assert [c["id"] for c in resp.json()] == list(reversed(visible))
    for item in resp.json():
        SdkCapsule.model_validate(item)
        assert item["created_at"].endswith("Z") and len(item["created_at"]) == 20


async def test_create_runs_on_agent(
    http: httpx.AsyncClient, own_team: tuple[uuid.UUID, dict[str, str]], agent: Agent, cleanup: list[str]
) -> None:
    """create → running on the host → listed, pinged, usable → destroyed on the host and `stopped`."""
    _, headers = own_team
    body = {"template": "minimal", "vcpus": 2, "memory_mb": 1024, "timeout_sec": 5, "metadata": {"env": "t"}}
    resp = await http.post("/v1/capsules", json=body, headers=headers)
    assert resp.status_code == 201, resp.text
    cleanup.append(resp.json()["id"])
    capsule = SdkCapsule.model_validate(resp.json())
    assert capsule.id is not None and capsule.status is not None and capsule.status.value == "running"
    assert (capsule.vcpus, capsule.memory_mb, capsule.timeout_sec, capsule.disk_size_mb) == (
        2,
        1024,
        60,
        5120,
    )
    assert capsule.metadata is not None and capsule.metadata["env"] == "t"
    assert capsule.metadata["agent_version"] == __version__ and capsule.metadata["runtime"] == "gvisor"
    assert capsule.metadata["envd_version"] == ENVD_VERSION  # the guest's own envd (the image under test's)
    assert ipaddress.IPv4Address(resp.json()["host_ip"]) in ipaddress.IPv4Network("10.11.0.0/16")
    assert capsule.started_at is not None and capsule.template == "minimal"
    assert (await agent.sandboxes())[capsule.id].status == pb.SANDBOX_STATUS_RUNNING
    container = agent.guest_name(capsule.id)  # a guest from the warm pool keeps its own name
    assert container in await agent.containers()
    network = slot_namespaces(resp.json()["host_ip"])
    assert network <= await namespaces()

    listed = (await http.get("/v1/capsules", headers=headers)).json()
    assert [c["id"] for c in listed] == [capsule.id]
    assert (await http.post(f"/v1/capsules/{capsule.id}/ping", headers=headers)).status_code == 204
    ran = await http.post(f"/v1/capsules/{capsule.id}/exec", json={"cmd": "hostname"}, headers=headers)
    assert ran.status_code == 200 and ran.json()["stdout"] == "capsule\n", ran.text

    assert (await http.delete(f"/v1/capsules/{capsule.id}", headers=headers)).status_code == 204
    assert capsule.id not in await agent.sandboxes()
    assert container not in await agent.containers()
    assert not network & await namespaces()
    got = (await http.get(f"/v1/capsules/{capsule.id}", headers=headers)).json()
    assert got["status"] == "stopped"
    assert (await http.get("/v1/capsules", headers=headers)).json() == []
    again = await http.post(f"/v1/capsules/{capsule.id}/exec", json={"cmd": "true"}, headers=headers)
    assert assert_error(again, 409, "invalid_state") == "sandbox is not running (status: stopped)"
    assert (await http.delete(f"/v1/capsules/{capsule.id}", headers=headers)).status_code == 204


async def only_row(harness: Harness, team_id: uuid.UUID) -> tuple[str, str | None]:
    rows = await harness.rows(team_id)
    assert len(rows) == 1
    return rows[0].status, rows[0].error


async def test_template_missing_on_host_fails_create(
    http: httpx.AsyncClient, harness: Harness, own_team: tuple[uuid.UUID, dict[str, str]], agent: Agent
) -> None:
    """The database knows the template, the host has no files for it: the agent's NOT_FOUND comes back,
    and the row ends `error` with that reason (not listed, nothing left on the host)."""
    team_id, headers = own_team
    await harness.template(team_id, "ghost")
    before = set(await agent.sandboxes())
    resp = await http.post("/v1/capsules", json={"template": "ghost"}, headers=headers)
    message = assert_error(resp, 404, "not_found")
    assert "template 'ghost' is not available on this host" in message
    assert await only_row(harness, team_id) == ("error", message)
    assert (await http.get("/v1/capsules", headers=headers)).json() == []
    assert set(await agent.sandboxes()) == before


async def test_boot_failure_marks_error(
    http: httpx.AsyncClient, harness: Harness, own_team: tuple[uuid.UUID, dict[str, str]], agent: Agent
) -> None:
    """A template whose root filesystem has no init: runsc cannot start the capsule. The answer is 502
    `agent_error` with the runtime's reason, the row ends `error` with it, and the host keeps nothing."""
    team_id, headers = own_team
    await agent.template_without_init(harness, team_id, "broken")
    before = set(await agent.sandboxes())
    resp = await http.post("/v1/capsules", json={"template": "broken"}, headers=headers)
    message = assert_error(resp, 502, "agent_error")
    assert message.startswith("capsule failed to start"), message
    assert "/usr/local/bin/wrenn-init" in message  # the runtime's own words reach the user
    assert await only_row(harness, team_id) == ("error", message)
    wire_id = format_id(Kind.SANDBOX, (await harness.rows(team_id))[0].id)
    assert set(await agent.sandboxes()) == before
    assert wire_id not in await agent.containers()
    assert not (agent.dir / "sandboxes" / wire_id).exists()


async def test_create_beyond_wait_bound_answers_starting(
    http: httpx.AsyncClient,
    harness: Harness,
    own_team: tuple[uuid.UUID, dict[str, str]],
    agent: Agent,
    cleanup: list[str],
    tmp_path: Path,
) -> None:
    """A control plane that waits 0 s answers 201 `starting`; the boot finishes in the background and
    the capsule becomes `running` (seen here through the other control plane on the same database)."""
    _, headers = own_team
    impatient = ServerThread(settings_for(tmp_path, harness.settings.database_url, create_wait_sec=0))
    await asyncio.to_thread(impatient.start)
    try:
        async with httpx.AsyncClient(base_url=impatient.base_url, timeout=60) as other:
            resp = await other.post("/v1/capsules", json={}, headers=headers)
        assert resp.status_code == 201, resp.text
        capsule_id = resp.json()["id"]
        cleanup.append(capsule_id)
        assert resp.json()["status"] == "starting"
        assert "started_at" not in resp.json()
        got: dict[str, object] = {}
        for _ in range(300):
            got = (await http.get(f"/v1/capsules/{capsule_id}", headers=headers)).json()
            if got["status"] != "starting":
                break
            await asyncio.sleep(0.1)
        assert got["status"] == "running" and got["started_at"], got
    finally:
        await asyncio.to_thread(impatient.stop)
    ran = await http.post(f"/v1/capsules/{capsule_id}/exec", json={"cmd": "true"}, headers=headers)
    assert ran.status_code == 200 and ran.json()["exit_code"] == 0
    assert (await http.delete(f"/v1/capsules/{capsule_id}", headers=headers)).status_code == 204
    assert capsule_id not in await agent.sandboxes()
