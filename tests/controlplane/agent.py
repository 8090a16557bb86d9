"""The real host agent (`wrenn_server.hostagent.app.HostAgent` on gVisor) for the control-plane tests.

It serves from the test event loop: `HostAgent.start()` installs a SIGCHLD handler, which only the main
thread's loop can do. The control plane under test runs in its own thread and reaches the agent over gRPC,
so test code must never block the test loop while the control plane works (use the async HTTP client, and
`asyncio.to_thread` for anything blocking). The gRPC client here is for arranging situations and checking
the host's side of things, never a substitute for the API.
"""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from tests.guests import guest
from wrenn_server.hostagent.app import HostAgent
from wrenn_server.hostagent.settings import AgentSettings
from wrenn_server.proto._generated import hostagent_pb2 as pb
from wrenn_server.proto._generated import hostagent_pb2_grpc as pb_grpc

from .harness import AGENT_TOKEN, Harness
from .pg import free_port

METADATA = (("x-wrenn-agent-token", AGENT_TOKEN),)
HOST_IP_BASE = ipaddress.IPv4Address("10.11.0.0")


async def _start(settings: AgentSettings) -> HostAgent:
    agent = HostAgent(settings)
    await agent.start()
    agent.auth.token = AGENT_TOKEN  # what registering with a control plane would have set
    return agent


def _agent_dir(data_dir: Path) -> Path:
    """A private agent directory inside the shared data directory: its own capsule records and runsc root,
    the base image from the shared `images`, and a `teams` image directory tests may write to."""
    root = data_dir / "controlplane-agent"
    images = root / "images"
    (images / "teams").mkdir(parents=True, exist_ok=True)
    if not (images / "minimal").exists():
        (images / "minimal").symlink_to(data_dir / "images" / "minimal")
    return root


async def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, list(argv), capture_output=True, text=True, timeout=60)


async def namespaces() -> set[str]:
    return set((await _run("ip", "netns", "list")).stdout.split())


def slot_namespaces(host_ip: str) -> set[str]:
    """The namespaces the agent made for the capsule reachable at `host_ip`."""
    slot = int(ipaddress.IPv4Address(host_ip)) - int(HOST_IP_BASE)
    return {f"wrenn-ns-{slot}", f"wrenn-cns-{slot}"}


@dataclass
class Agent:
    settings: AgentSettings
    agent: HostAgent
    channel: grpc.aio.Channel
    stub: Any

    @classmethod
    async def start(cls, data_dir: Path) -> Agent:
        settings = AgentSettings(
            dir=_agent_dir(data_dir), host_listen_addr=f"127.0.0.1:{free_port()}", runtime="gvisor"
        )
        agent = await _start(settings)
        channel = grpc.aio.insecure_channel(settings.host_listen_addr)
        return cls(settings, agent, channel, pb_grpc.HostAgentServiceStub(channel))  # type: ignore[no-untyped-call]

    def reported(self) -> dict[str, Any]:
        """The runtime and capabilities this agent reports with its heartbeats."""
        runtime = self.agent.manager.runtime if self.agent.manager else None
        assert runtime is not None, "the agent has not started"
        return {"runtime": runtime.name, "capabilities": runtime.capabilities.to_wire()}

    @property
    def address(self) -> str:
        return self.settings.host_listen_addr

    @property
    def dir(self) -> Path:
        return self.settings.dir

    async def sandboxes(self) -> dict[str, pb.SandboxInfo]:
        """What the agent has (running capsules and tombstones of dead ones), by wire ID."""
        listing = await self.stub.ListSandboxes(pb.Empty(), metadata=METADATA, timeout=15)
        return {info.sandbox_id: info for info in listing.sandboxes}

    async def destroy(self, wire_id: str) -> None:
        await self.stub.DestroySandbox(pb.SandboxRef(sandbox_id=wire_id), metadata=METADATA, timeout=120)

    async def runsc(self, *args: str) -> subprocess.CompletedProcess[str]:
        return await _run("runsc", "--root", str(self.dir / "runsc"), *args)

    def guest_name(self, wire_id: str) -> str:
        return guest(self.dir, wire_id)[0]

    async def containers(self) -> set[str]:
        """The runsc containers under this agent's root."""
        return set((await self.runsc("list", "-quiet")).stdout.split())

    async def restart(self, while_down: Callable[[], Awaitable[object]] | None = None) -> None:
        """Stop the agent and start a new one on the same directory and address, as a restarted agent
        process would; `while_down` runs in between."""
        await self.agent.stop()
        try:
            if while_down is not None:
                await while_down()
        finally:
            self.agent = await _start(self.settings)

    def team_template(self, team_id: uuid.UUID, template_id: uuid.UUID) -> Path:
        """Where a team template's files live on this host (its root filesystem is `rootfs/` inside)."""
        return self.dir / "images" / "teams" / str(team_id) / str(template_id)

    async def template_without_init(self, harness: Harness, team_id: uuid.UUID, name: str) -> None:
        """A team template whose root filesystem has no init: the runtime cannot start a capsule of it."""
        rootfs = self.team_template(team_id, await harness.template(team_id, name)) / "rootfs"
        rootfs.mkdir(parents=True)
        (rootfs / "README").write_text("no init here\n")

    async def close(self) -> list[str]:
        """Destroy every capsule the agent still has, stop it; answers what the host still holds after."""
        try:
            live = {record.slot for record in self.agent.manager.list()} if self.agent.manager else set()
            for wire_id in await self.sandboxes():
                await self.destroy(wire_id)
        finally:
            await self.channel.close()
            await self.agent.stop()  # stops its warm pool too
        left = [f"runsc container {name}" for name in await self.containers()]
        names = {f"wrenn-{kind}-{slot}" for kind in ("ns", "cns") for slot in live}
        left += [f"namespace {name}" for name in sorted(await namespaces() & names)]
        return left


async def agent_team(harness: Harness, agent: Agent) -> tuple[uuid.UUID, dict[str, str]]:
    """A new BYOC team whose only host is the real agent: (team id, API-key headers)."""
    team_id, api_key = await harness.team(byoc=True)
    await harness.host(team_id, address=agent.address, **agent.reported())
    return team_id, {"X-API-Key": api_key}
