"""The database cannot give away what calls a host's agent, and the control plane's files are for root alone."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx
from sqlalchemy import select

from wrenn_server.controlplane.db.models import Host
from wrenn_server.controlplane.ids import agent_rpc_token, hash_secret
from wrenn_server.controlplane.services.agents import AgentPool, HostRef

from .harness import Harness, serving, settings_for


async def test_the_database_holds_no_agent_token(http: httpx.AsyncClient, harness: Harness) -> None:
    host_id, token = await harness.pending_host()
    resp = await http.post("/v1/hosts/register", json={"token": token, "address": "127.0.0.1:1"})
    assert resp.status_code == 201, resp.text
    rpc_token = resp.json()["rpc_token"]
    assert len(rpc_token) == 64
    async with harness.sessionmaker() as session:
        stored = (await session.scalars(select(Host.rpc_token).where(Host.id == host_id))).one()
    # Neither the stored value nor anything computed from it without the control plane's secret is the token.
    assert stored and rpc_token not in stored and hash_secret(rpc_token) not in stored
    assert agent_rpc_token("", host_id, stored) != rpc_token
    # The control plane, with its secret, presents exactly the token the agent was given.
    pool = AgentPool(harness.settings.resolve_jwt_secret())
    metadata = pool.client(HostRef(host_id, "127.0.0.1:1", stored))._metadata
    assert metadata == (("x-wrenn-agent-token", rpc_token),)
    await pool.close()
    refreshed = await http.post("/v1/hosts/auth/refresh", json={"refresh_token": resp.json()["refresh_token"]})
    assert refreshed.json()["rpc_token"] == rpc_token


async def test_a_token_stored_whole_is_replaced_at_the_next_refresh(http: httpx.AsyncClient, harness: Harness) -> None:
    """Hosts registered before seeds keep working with their token until they refresh, which replaces it."""
    host_id, token = await harness.pending_host()
    creds = (await http.post("/v1/hosts/register", json={"token": token, "address": "127.0.0.1:1"})).json()
    async with harness.sessionmaker() as session:
        host = await session.get(Host, host_id)
        assert host is not None
        host.rpc_token = "a" * 64  # as a control plane before this change stored it
        await session.commit()
    assert agent_rpc_token(harness.settings.resolve_jwt_secret(), host_id, "a" * 64) == "a" * 64
    new = (await http.post("/v1/hosts/auth/refresh", json={"refresh_token": creds["refresh_token"]})).json()
    assert len(new["rpc_token"]) == 64 and new["rpc_token"] != "a" * 64
    async with harness.sessionmaker() as session:
        stored = (await session.scalars(select(Host.rpc_token).where(Host.id == host_id))).one()
    assert new["rpc_token"] not in stored


async def test_the_data_directory_is_for_root_alone(tmp_path: Path) -> None:
    directory, database = tmp_path / "wrenn", tmp_path / "wrenn" / "wrenn.db"
    directory.mkdir(mode=0o755)  # as an older `wrenn up` left it
    settings = settings_for(directory, f"sqlite+aiosqlite:///{database}", jwt_secret="")
    async with serving(settings):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        for secret in (database, directory / "jwt-secret"):
            assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
