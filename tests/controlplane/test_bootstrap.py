"""Embedded-mode bootstrap: the admin key and the local host's registration token."""

from __future__ import annotations

import httpx

from wrenn_server.controlplane.ids import is_api_key_format
from wrenn_server.controlplane.services.bootstrap import ensure_admin_key, local_host_registration

from .harness import Harness


async def test_ensure_admin_key(http: httpx.AsyncClient, harness: Harness) -> None:
    key = await ensure_admin_key(harness.sessionmaker, None)
    assert is_api_key_format(key)
    assert await ensure_admin_key(harness.sessionmaker, key) == key
    assert (await http.get("/v1/hosts", headers={"X-API-Key": key})).status_code == 200

    chosen = "wrn_" + "ab" * 16
    assert await ensure_admin_key(harness.sessionmaker, chosen) == chosen
    assert (await http.get("/v1/capsules", headers={"X-API-Key": chosen})).status_code == 200

    replaced = await ensure_admin_key(harness.sessionmaker, "not-a-key")
    assert replaced != "not-a-key" and is_api_key_format(replaced)


async def test_local_host_registration(http: httpx.AsyncClient, harness: Harness) -> None:
    address = "127.0.0.1:59999"
    token = await local_host_registration(harness.sessionmaker, address)
    assert token is not None
    # Still pending (the agent never registered): a fresh token, the same host.
    second = await local_host_registration(harness.sessionmaker, address)
    assert second is not None and second != token
    resp = await http.post("/v1/hosts/register", json={"token": second, "address": address})
    assert resp.status_code == 201
    assert resp.json()["host"]["type"] == "regular"
    assert await local_host_registration(harness.sessionmaker, address) is None
    # Take it out of the regular pool again so placement tests see no regular hosts.
    from sqlalchemy import update

    from wrenn_server.controlplane.db.models import Host

    async with harness.sessionmaker() as session:
        await session.execute(update(Host).where(Host.address == address).values(status="offline"))
        await session.commit()
