"""The host agent, started in this process on one runtime at a time, a gRPC client to it, what its runtime
measured it can do here, and one capsule per test module."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tests.skips import skip_missing
from wrenn_server.hostagent.app import HostAgent
from wrenn_server.hostagent.runtimes import RUNTIMES, build_runtime
from wrenn_server.hostagent.runtimes.base import Capabilities
from wrenn_server.hostagent.settings import AgentSettings
from wrenn_server.proto._generated import hostagent_pb2 as pb
from wrenn_server.proto._generated import hostagent_pb2_grpc as pb_grpc

from .calls import create

TOKEN = "conformance-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class AgentHandle:
    agent: HostAgent
    stub: pb_grpc.HostAgentServiceStub
    channel: grpc.aio.Channel
    settings: AgentSettings
    md: tuple[tuple[str, str], ...] = (("x-wrenn-agent-token", TOKEN),)

    async def restart(self) -> None:
        await self.agent.stop()
        self.agent = HostAgent(self.settings)
        await self.agent.start()
        self.agent.auth.token = TOKEN


@pytest.fixture(scope="session", params=RUNTIMES)
def runtime_name(request: pytest.FixtureRequest, data_dir: Path) -> str:
    name = str(request.param)
    probe = asyncio.run(build_runtime(name, data_dir).probe())
    if not probe.available:
        skip_missing(f"runtime {name}", f"it cannot run here: {probe.reason}")
    return name


@pytest.fixture(scope="session")
async def agent(runtime_name: str, data_dir: Path) -> AsyncIterator[AgentHandle]:
    port = free_port()
    settings = AgentSettings(dir=data_dir, host_listen_addr=f"127.0.0.1:{port}", runtime=runtime_name)
    agent = HostAgent(settings)
    await agent.start()
    agent.auth.token = TOKEN
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    handle = AgentHandle(agent, pb_grpc.HostAgentServiceStub(channel), channel, settings)
    yield handle
    for info in (await handle.stub.ListSandboxes(pb.Empty(), metadata=handle.md)).sandboxes:
        await handle.stub.DestroySandbox(pb.SandboxRef(sandbox_id=info.sandbox_id), metadata=handle.md)
    await channel.close()
    await handle.agent.stop()


@pytest.fixture
def capabilities(agent: AgentHandle) -> Capabilities:
    """What the agent's runtime measured it can do here: tests branch and skip on these, never on its name."""
    assert agent.agent.manager is not None
    return agent.agent.manager.runtime.capabilities


@pytest.fixture(scope="module")
async def capsule(agent: AgentHandle) -> AsyncIterator[pb.SandboxInfo]:
    info = await create(agent, default_env={"FROM_TEMPLATE": "yes"})
    yield info
    await agent.stub.DestroySandbox(pb.SandboxRef(sandbox_id=info.sandbox_id), metadata=agent.md)
