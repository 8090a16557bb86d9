"""Network leftovers reclaimed at agent start: a `wrenn agent` killed hard (SIGKILL) leaves the namespaces,
links and slot files of its warm guests, spare slots and capsules; the next agent removes those of everything
that is gone, and keeps what live capsules (and other agents) hold."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.agent_process import AgentProcess, skip_without_gvisor, until
from tests.cleanup import SLOTS
from tests.guests import guest, kill_guest
from wrenn_server.hostagent.network import Slot
from wrenn_server.proto._generated import hostagent_pb2 as pb
from wrenn_server.proto._generated import hostagent_pb2_grpc as pb_grpc

pytestmark = pytest.mark.runtime

TOKEN = "network-test-token"
MD = (("x-wrenn-agent-token", TOKEN),)
# Slots planted by hand sit at the top of the range, where no agent's lowest-free allocation reaches.
PLANTED = range(32760, 32764)


def sh(*argv: str, check: bool = True) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=check).stdout


def namespace_id(name: str) -> int | None:
    """The namespace's identity (its nsfs inode): a namespace removed and made again has a new one."""
    try:
        return os.stat(f"/run/netns/{name}").st_ino
    except FileNotFoundError:
        return None


def link_index(name: str) -> int | None:
    out = subprocess.run(["ip", "-o", "link", "show", "dev", name], capture_output=True, text=True).stdout
    return int(out.split(":", 1)[0]) if out else None


def slot_owner(index: int) -> str | None:
    try:
        return (SLOTS / str(index)).read_text()
    except OSError:
        return None


def identity(index: int) -> tuple[int | None, int | None, int | None]:
    """What a slot is made of on the host: its two namespaces and its host-side veth (None: not there)."""
    slot = Slot(index)
    return namespace_id(slot.router_ns), namespace_id(slot.capsule_ns), link_index(slot.veth)


def mark(index: int) -> None:
    """Tag a slot's namespaces (an alias on each one's loopback) and veth (an alias): a slot removed and made
    again for something new carries no tags (namespace inodes and link numbers may be reused, tags are not)."""
    slot = Slot(index)
    for ns in (slot.router_ns, slot.capsule_ns):
        sh("ip", "-n", ns, "link", "set", "dev", "lo", "alias", "wrenn-mark")
    sh("ip", "link", "set", "dev", slot.veth, "alias", "wrenn-mark")


def marks(index: int) -> tuple[bool, bool, bool]:
    slot = Slot(index)
    links = [
        sh("ip", "-n", slot.router_ns, "-o", "link", "show", "dev", "lo", check=False),
        sh("ip", "-n", slot.capsule_ns, "-o", "link", "show", "dev", "lo", check=False),
        sh("ip", "-o", "link", "show", "dev", slot.veth, check=False),
    ]
    router, capsule, veth = ("alias wrenn-mark" in link for link in links)
    return router, capsule, veth


def plant(index: int, owner: str | None) -> None:
    """A slot as a killed agent leaves it: both namespaces, the veth between host and router, a slot file."""
    slot = Slot(index)
    sh("ip", "netns", "add", slot.router_ns)
    sh("ip", "netns", "add", slot.capsule_ns)
    sh("ip", "link", "add", slot.veth, "type", "veth", "peer", "name", "eth0", "netns", slot.router_ns)
    if owner is not None:
        (SLOTS / str(index)).write_text(owner)


def unplant(index: int, owner: str | None) -> None:
    slot = Slot(index)
    for ns in (slot.capsule_ns, slot.router_ns):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    subprocess.run(["ip", "link", "del", slot.veth], capture_output=True)
    if owner is not None and slot_owner(index) == owner:
        (SLOTS / str(index)).unlink(missing_ok=True)


def slot_of(info: pb.SandboxInfo) -> int:
    return int(ipaddress.IPv4Address(info.host_ip)) - int(ipaddress.IPv4Address("10.11.0.0"))


@dataclass
class NetworkAgent(AgentProcess):
    """An agent registered by the credentials file a registration leaves, and a gRPC client to it."""

    channel: grpc.aio.Channel | None = None

    async def stub(self) -> Any:
        """A client, once the agent answers (it serves only after it has re-adopted and reclaimed)."""
        if self.channel is not None:
            await self.channel.close()
        self.channel = grpc.aio.insecure_channel(self.address)
        stub = pb_grpc.HostAgentServiceStub(self.channel)  # type: ignore[no-untyped-call]

        async def answers() -> bool | None:
            assert self.running(), self.tail()
            try:
                await stub.Ping(pb.PingRequest(), metadata=MD, timeout=5)
            except grpc.aio.AioRpcError:
                return None
            return True

        await until(answers, "the agent to answer", 180)
        return stub

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()
        await super().close()


@pytest.fixture
async def agent(data_dir: Path) -> AsyncIterator[NetworkAgent]:
    await skip_without_gvisor(data_dir)
    handle = NetworkAgent.in_dir(data_dir)
    # What a registration with a control plane leaves; the control plane itself is not needed here.
    creds = {"host_id": "host-x", "token": "t", "refresh_token": "r", "rpc_token": TOKEN, "cp_url": ""}
    handle.credentials.write_text(json.dumps(creds))
    try:
        yield handle
    finally:
        await handle.close()


async def create(stub: Any) -> pb.SandboxInfo:
    req = pb.CreateSandboxRequest(
        sandbox_id="cl-" + uuid.uuid4().hex[:25], template="minimal", vcpus=1, memory_mb=512, disk_size_mb=5120
    )
    info: pb.SandboxInfo = await stub.CreateSandbox(req, metadata=MD, timeout=180)
    return info


async def echo(stub: Any, info: pb.SandboxInfo, word: str) -> bytes:
    req = pb.ExecRequest(sandbox_id=info.sandbox_id, cmd="echo", args=[word])
    out: pb.ExecResponse = await stub.Exec(req, metadata=MD, timeout=60)
    return bytes(out.stdout)


def owned(owner: str) -> set[int]:
    return {int(p.name) for p in SLOTS.glob("*") if p.name.isdigit() and slot_owner(int(p.name)) == owner}


def containers(root: Path) -> set[str]:
    return set(sh("runsc", "--root", str(root / "runsc"), "list", "-quiet", check=False).split())


async def test_an_agent_killed_hard_leaves_network_that_the_next_one_reclaims_keeping_live_capsules(
    agent: NetworkAgent,
) -> None:
    agent.start()
    stub = await agent.stub()
    keep = await create(stub)
    lose = await create(stub)

    async def warm() -> bool | None:  # a warm guest waits in the pool: the kill leaves it behind
        ping = await stub.Ping(pb.PingRequest(), metadata=MD, timeout=15)
        return True if ping.pool["ready"] >= 1 else None

    await until(warm, "a warm guest", 180)
    # A capsule taken from the pool keeps its guest's `wp-` name: the warm guests are the others.
    capsules = {guest(agent.dir, info.sandbox_id)[0] for info in (keep, lose)}
    pool_guests = {name for name in containers(agent.dir) if name.startswith("wp-")} - capsules
    assert pool_guests

    async def settled() -> set[int] | None:  # the two capsules, the warm guest and a spare slot, all built
        held = owned(agent.owner)
        built = all(None not in identity(index) for index in held)
        return held if built and len(held) >= 3 + len(pool_guests) else None

    held = await until(settled, "the spare slots", 180)
    assert {slot_of(keep), slot_of(lose)} <= held
    gone = held - {slot_of(keep)}  # the lost capsule's, the warm guest's and the spares
    assert len(gone) >= 2, held
    for index in held:
        mark(index)

    assert await agent.stop(signal.SIGKILL) == -signal.SIGKILL
    kill_guest(agent.dir, lose.sandbox_id)  # and a capsule dies while no agent runs

    gone_owner = tempfile.mkdtemp(prefix="wrenn-gone-", dir="/var/tmp")
    os.rmdir(gone_owner)  # a data directory deleted with its agent
    other_owner = tempfile.mkdtemp(prefix="wrenn-other-agent-", dir="/var/tmp")  # another agent's, alive
    unclaimed, of_a_gone_dir, of_another_agent, of_ours = PLANTED
    planted = {unclaimed: None, of_a_gone_dir: gone_owner, of_another_agent: other_owner, of_ours: agent.owner}
    try:
        for index, owner in planted.items():
            plant(index, owner)
        mark(of_another_agent)
        others = identity(of_another_agent)

        agent.start()
        stub = await agent.stub()

        # The live capsule keeps its own slot, untouched, and is reachable through it.
        listed = {s.sandbox_id: s for s in (await stub.ListSandboxes(pb.Empty(), metadata=MD)).sandboxes}
        assert listed[keep.sandbox_id].status == pb.SANDBOX_STATUS_RUNNING
        assert marks(slot_of(keep)) == (True, True, True)
        assert slot_owner(slot_of(keep)) == agent.owner
        assert keep.host_ip in sh("ip", "route", "show", f"{keep.host_ip}/32")
        assert await echo(stub, keep, "still-here") == b"still-here\n"
        # The capsule that died is reported, and nothing of what is gone keeps its network: each of those
        # slots is removed (its number may serve a new spare or warm guest: then it is made anew).
        assert listed[lose.sandbox_id].status == pb.SANDBOX_STATUS_ERROR and listed[lose.sandbox_id].error
        assert {index: marks(index) for index in gone} == {index: (False, False, False) for index in gone}
        assert not containers(agent.dir) & pool_guests
        assert not any((agent.dir / "sandboxes" / name).exists() for name in pool_guests)
        # Planted leftovers: namespaces no slot file claims, a slot of a deleted data directory and one of
        # ours are removed; the slot of another agent that is still there is left alone.
        for index in (unclaimed, of_a_gone_dir, of_ours):
            assert identity(index) == (None, None, None), index
            assert slot_owner(index) is None, index
        assert identity(of_another_agent) == others and marks(of_another_agent) == (True, True, True)
        assert slot_owner(of_another_agent) == other_owner
        # The host rules were installed once, not once more per start.
        assert sh("nft", "list", "table", "ip", "wrenn").count("masquerade") == 1

        # And the network is whole for new capsules.
        fresh = await create(stub)
        assert await echo(stub, fresh, "fresh") == b"fresh\n"
        for info in (keep, lose, fresh):
            await stub.DestroySandbox(pb.SandboxRef(sandbox_id=info.sandbox_id), metadata=MD, timeout=120)
    finally:
        for index, owner in planted.items():
            unplant(index, owner)
        os.rmdir(other_owner)
