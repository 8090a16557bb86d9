"""Fixtures: the control plane over real HTTP, once on SQLite and once on PostgreSQL, and the real host
agent behind it (see `agent.py`: it serves from the test loop, so never block that loop)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.skips import skip_missing
from wrenn_server.hostagent.runtimes import build_runtime

from .agent import Agent, agent_team
from .harness import Harness, ServerThread, serving, settings_for
from .pg import PostgresServer, postgres_server

__all__ = ["postgres_server"]

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents and "agent" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.runtime)


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh database URL for one backend (sqlite or postgres)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('cp-sqlite') / 'wrenn.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()


@pytest.fixture(scope="session")
async def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServerThread]:
    async with serving(settings_for(tmp_path_factory.mktemp("cp-dir"), database_url)) as thread:
        yield thread


@pytest.fixture(scope="session")
async def harness(
    server: ServerThread, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Harness]:
    settings = settings_for(tmp_path_factory.mktemp("cp-harness"), database_url)
    harness = Harness.connect(settings, server.base_url)
    try:
        yield harness
    finally:
        await harness.close()


@pytest.fixture
async def http(server: ServerThread) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
        yield client


@pytest.fixture
async def team(harness: Harness) -> tuple[object, str]:
    """A fresh team (no hosts of its own, regular hosts apply) and its API key."""
    return await harness.team()


@pytest.fixture(scope="session")
async def agent(data_dir: Path) -> AsyncIterator[Agent]:
    """The host agent on gVisor, for the whole session; at the end every capsule it still has is destroyed
    and the host must hold nothing of them any more."""
    probe = await build_runtime("gvisor", data_dir).probe()
    if not probe.available:
        skip_missing("runtime gvisor", f"it cannot run here: {probe.reason}")
    handle = await Agent.start(data_dir)
    left: list[str] = []
    try:
        yield handle
    finally:
        left = await handle.close()
    assert not left, f"left on the host after the session: {left}"


@pytest.fixture
async def own_team(harness: Harness, agent: Agent) -> tuple[uuid.UUID, dict[str, str]]:
    """A new BYOC team whose only host is the real agent: (team id, API-key headers)."""
    return await agent_team(harness, agent)


@pytest.fixture
async def cleanup(agent: Agent) -> AsyncIterator[list[str]]:
    """Wire IDs a test created: whatever of them the agent still has at the end is destroyed."""
    created: list[str] = []
    yield created
    alive = await agent.sandboxes()
    for wire_id in created:
        if wire_id in alive:
            await agent.destroy(wire_id)


Running = tuple[str, dict[str, str]]  # a capsule id and the headers of its team


@pytest.fixture(scope="module")
async def running(server: ServerThread, harness: Harness, agent: Agent) -> AsyncIterator[Running]:
    """One running capsule per test module (against that module's `server`), destroyed at its end."""
    _, headers = await agent_team(harness, agent)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
        resp = await client.post("/v1/capsules", json={}, headers=headers)
        assert resp.status_code == 201 and resp.json()["status"] == "running", resp.text
        capsule = resp.json()["id"]
        try:
            yield capsule, headers
        finally:
            await client.delete(f"/v1/capsules/{capsule}", headers=headers)
            if capsule in await agent.sandboxes():
                await agent.destroy(capsule)
