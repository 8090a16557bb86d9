"""Host registration, heartbeat and credential refresh over HTTP."""

from __future__ import annotations

import httpx
import jwt

from wrenn_server.controlplane.ids import Kind, format_id
from wrenn_server.controlplane.services.bootstrap import ensure_admin_key

from .harness import Harness
from .test_errors_auth import assert_error

CAPACITY = {"arch": "x86_64", "cpu_cores": 8, "memory_mb": 16384, "disk_gb": 200}


async def test_register_with_bad_token(http: httpx.AsyncClient) -> None:
    body = {"token": "f" * 64, "address": "127.0.0.1:50051"}
    assert_error(await http.post("/v1/hosts/register", json=body), 401, "unauthorized")
    assert_error(await http.post("/v1/hosts/register", json={"address": "x:1"}), 400, "invalid_request")
    assert_error(await http.post("/v1/hosts/register", json={"token": "", "address": "x:1"}), 400, "invalid_request")
    assert_error(await http.post("/v1/hosts/register", json={"token": 5, "address": "x:1"}), 400, "invalid_request")


async def test_register_heartbeat_refresh(http: httpx.AsyncClient, harness: Harness) -> None:
    team_id, api_key = await harness.team(byoc=True)
    host_id, token = await harness.pending_host(team_id)
    wire_id = format_id(Kind.HOST, host_id)
    resp = await http.post("/v1/hosts/register", json={"token": token, "address": "127.0.0.1:1", **CAPACITY})
    assert resp.status_code == 201, resp.text
    creds = resp.json()
    assert set(creds) == {"host", "token", "refresh_token", "rpc_token"}
    host = creds["host"]
    assert (host["id"], host["status"], host["address"], host["cpu_cores"]) == (
        wire_id,
        "online",
        "127.0.0.1:1",
        8,
    )
    assert host["type"] == "byoc" and host["team_id"] == format_id(Kind.TEAM, team_id)
    assert len(creds["rpc_token"]) == 64 and len(creds["refresh_token"]) == 64
    claims = jwt.decode(creds["token"], options={"verify_signature": False})
    assert claims["typ"] == "host" and claims["host_id"] == wire_id

    # The registration token is single-use.
    again = await http.post("/v1/hosts/register", json={"token": token, "address": "127.0.0.1:1"})
    assert_error(again, 401, "unauthorized")

    beat = f"/v1/hosts/{wire_id}/heartbeat"
    assert (await http.post(beat, headers={"X-Host-Token": creds["token"]})).status_code == 204
    resp = await http.post(beat, json={"cpu_cores": 16}, headers={"X-Host-Token": creds["token"]})
    assert resp.status_code == 204
    assert_error(await http.post(beat), 401, "unauthorized")
    assert_error(await http.post(beat, headers={"X-Host-Token": "junk"}), 401, "unauthorized")
    other = f"/v1/hosts/{format_id(Kind.HOST, team_id)}/heartbeat"
    assert_error(await http.post(other, headers={"X-Host-Token": creds["token"]}), 403, "forbidden")
    assert_error(
        await http.post("/v1/hosts/bad/heartbeat", headers={"X-Host-Token": creds["token"]}),
        400,
        "invalid_request",
    )

    refreshed = await http.post("/v1/hosts/auth/refresh", json={"refresh_token": creds["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text
    new = refreshed.json()
    assert new["refresh_token"] != creds["refresh_token"] and new["rpc_token"] == creds["rpc_token"]
    assert (await http.post(beat, headers={"X-Host-Token": new["token"]})).status_code == 204
    reused = await http.post("/v1/hosts/auth/refresh", json={"refresh_token": creds["refresh_token"]})
    assert_error(reused, 401, "unauthorized")

    # The freshly registered host takes capsules of its team (its agent is not there: 503 host_unavailable).
    resp = await http.post("/v1/capsules", json={"vcpus": 12}, headers={"X-API-Key": api_key})
    assert_error(resp, 503, "host_unavailable")


async def test_heartbeat_brings_unreachable_host_back(http: httpx.AsyncClient, harness: Harness) -> None:
    team_id, _ = await harness.team(byoc=True)
    host_id, token = await harness.pending_host(team_id)
    creds = (await http.post("/v1/hosts/register", json={"token": token, "address": "127.0.0.1:2"})).json()
    from sqlalchemy import update

    from wrenn_server.controlplane.db.models import Host

    async with harness.sessionmaker() as session:
        await session.execute(update(Host).where(Host.id == host_id).values(status="unreachable"))
        await session.commit()
    wire_id = format_id(Kind.HOST, host_id)
    assert (
        await http.post(f"/v1/hosts/{wire_id}/heartbeat", headers={"X-Host-Token": creds["token"]})
    ).status_code == 204
    async with harness.sessionmaker() as session:
        assert (await session.get(Host, host_id, populate_existing=True)).status == "online"  # type: ignore[union-attr]


async def test_list_hosts_needs_admin(http: httpx.AsyncClient, team: tuple[object, str]) -> None:
    assert_error(await http.get("/v1/hosts", headers={"X-API-Key": team[1]}), 403, "forbidden")
    assert_error(await http.get("/v1/hosts"), 401, "unauthorized")


GVISOR = {
    "pause_with_memory": True,
    "snapshot": True,
    "hardware_acceleration": False,
    "disk_size_limit": False,
    "checkpoint_keeps_connections": False,
    "guest_sees_vcpus": False,
    "guest_kernel": False,
    "memory_file": False,
    "layered_files": True,
    "guest_capabilities_limited": True,
    "restores": ["gvisor"],
}


async def test_a_host_shows_the_runtime_and_capabilities_its_agent_last_reported(
    http: httpx.AsyncClient, harness: Harness
) -> None:
    admin = {"X-API-Key": await ensure_admin_key(harness.sessionmaker, None)}
    host_id, token = await harness.pending_host()
    wire_id = format_id(Kind.HOST, host_id)
    body = {"token": token, "address": "127.0.0.1:3", **CAPACITY, "runtime": "gvisor", "capabilities": GVISOR}
    resp = await http.post("/v1/hosts/register", json=body)
    assert resp.status_code == 201, resp.text
    creds = resp.json()
    assert creds["host"]["runtime"] == "gvisor" and creds["host"]["capabilities"] == GVISOR

    async def listed() -> dict[str, object]:
        hosts = (await http.get("/v1/hosts", headers=admin)).json()
        found: dict[str, object] = next(host for host in hosts if host["id"] == wire_id)
        return found

    assert (await listed())["capabilities"] == GVISOR
    # The agent came back on another runtime: its next heartbeat says so.
    microvm = {
        **GVISOR,
        "hardware_acceleration": True,
        "layered_files": False,
        "guest_capabilities_limited": False,
        "restores": ["microvm"],
    }
    beat = f"/v1/hosts/{wire_id}/heartbeat"
    headers = {"X-Host-Token": creds["token"]}
    resp = await http.post(beat, json={"runtime": "microvm", "capabilities": microvm}, headers=headers)
    assert resp.status_code == 204, resp.text
    host = await listed()
    assert host["runtime"] == "microvm" and host["capabilities"] == microvm
    # A heartbeat that says nothing of them keeps them; one that says them wrong is refused.
    assert (await http.post(beat, json={"cpu_cores": 4}, headers=headers)).status_code == 204
    assert (await listed())["capabilities"] == microvm
    wrong = {**microvm, "restores": "microvm"}
    assert_error(await http.post(beat, json={"capabilities": wrong}, headers=headers), 400, "invalid_request")
    assert_error(
        await http.post(beat, json={"capabilities": {"snapshot": True}}, headers=headers), 400, "invalid_request"
    )
