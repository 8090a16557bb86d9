"""A host whose disk has less free than the reserve it keeps for its own data refuses new capsules at once, with
the API's capacity error (503 `no_hosts_available`) naming the setting; with room again, creates go on; and a
capsule's `disk_used_mb` is what it wrote on its own disk."""

from __future__ import annotations

import shutil
import uuid

import httpx
import pytest

from .agent import Agent
from .test_errors_auth import assert_error

pytestmark = pytest.mark.runtime


async def test_a_host_under_its_disk_reserve_refuses_creates_with_503(
    http: httpx.AsyncClient, own_team: tuple[uuid.UUID, dict[str, str]], agent: Agent, cleanup: list[str]
) -> None:
    _, headers = own_team
    manager = agent.agent.manager
    assert manager is not None
    body = {"template": "minimal", "memory_mb": 256, "disk_size_mb": 512}
    manager.disk_reserve_mb = shutil.disk_usage(agent.settings.dir).free // 2**20 + 1024
    try:
        resp = await http.post("/v1/capsules", json=body, headers=headers)
        assert "WRENN_DISK_RESERVE_MB" in assert_error(resp, 503, "no_hosts_available")
        listed = await http.get("/v1/capsules", headers=headers)
        assert listed.status_code == 200 and listed.json() == []
    finally:
        manager.disk_reserve_mb = agent.settings.disk_reserve_mb
    resp = await http.post("/v1/capsules", json=body, headers=headers)
    assert resp.status_code == 201, resp.text
    capsule = resp.json()["id"]
    cleanup.append(capsule)
    run = {"cmd": "/bin/sh", "args": ["-c", "dd if=/dev/zero of=/root/f bs=1M count=100 && sync"]}
    done = await http.post(f"/v1/capsules/{capsule}/exec", json=run, headers=headers)
    assert done.status_code == 200 and done.json()["exit_code"] == 0, done.text
    used = (await http.get(f"/v1/capsules/{capsule}", headers=headers)).json()["disk_used_mb"]
    assert 100 <= used <= 110
