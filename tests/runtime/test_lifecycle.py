"""Capsules made and removed, on every runtime: a destroy leaves nothing behind, a restarted agent re-adopts
its capsules and reports the lost ones, calls need the token."""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess
from pathlib import Path

import grpc
import pytest

from tests.guests import guest, kill_guest
from wrenn_server.hostagent.network import Slot
from wrenn_server.proto._generated import hostagent_pb2 as pb

from .calls import create, sh
from .conftest import AgentHandle

pytestmark = pytest.mark.runtime


def _marked(link: str, namespace: str | None, mark: str) -> bool:
    where = ["-n", namespace] if namespace else []
    out = subprocess.run(["ip", *where, "-o", "link", "show", "dev", link], capture_output=True, text=True).stdout
    return f"alias {mark}" in out


async def test_destroy_leaves_nothing_behind(agent: AgentHandle) -> None:
    info = await create(agent)
    name, workdir = guest(agent.settings.dir, info.sandbox_id)
    slot = Slot(int(ipaddress.IPv4Address(info.host_ip)) - int(ipaddress.IPv4Address("10.11.0.0")))
    # The slot's namespaces and link are tagged: a slot freed by the destroy may at once be built again for a
    # spare or a warm guest (same names, same address), but never with the tags.
    mark = f"destroyed-{info.sandbox_id[-8:]}"
    for namespace in (slot.capsule_ns, slot.router_ns):
        subprocess.run(["ip", "-n", namespace, "link", "set", "dev", "lo", "alias", mark], check=True)
    subprocess.run(["ip", "link", "set", "dev", slot.veth, "alias", mark], check=True)
    await agent.stub.DestroySandbox(pb.SandboxRef(sandbox_id=info.sandbox_id), metadata=agent.md)
    assert not workdir.exists()
    assert name not in Path("/proc/mounts").read_text()
    listed = [s.sandbox_id for s in (await agent.stub.ListSandboxes(pb.Empty(), metadata=agent.md)).sandboxes]
    assert info.sandbox_id not in listed
    assert not _marked("lo", slot.capsule_ns, mark) and not _marked("lo", slot.router_ns, mark)
    assert not _marked(slot.veth, None, mark)  # and with it the route to the capsule's address
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await agent.stub.DestroySandbox(pb.SandboxRef(sandbox_id=info.sandbox_id), metadata=agent.md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_agent_restart_readopts_and_reports_lost(agent: AgentHandle) -> None:
    keep = await create(agent)
    lose = await create(agent)
    await sh(agent, keep, "echo kept > /root/mark")
    bg = await agent.stub.StartBackground(
        pb.ExecRequest(sandbox_id=keep.sandbox_id, cmd="sleep", args=["600"], tag="survivor"), metadata=agent.md
    )
    await agent.agent.stop()
    # While the agent is down, one capsule dies.
    kill_guest(agent.settings.dir, lose.sandbox_id)
    await asyncio.sleep(0.5)
    await agent.restart()
    listed = {s.sandbox_id: s for s in (await agent.stub.ListSandboxes(pb.Empty(), metadata=agent.md)).sandboxes}
    assert listed[keep.sandbox_id].status == pb.SANDBOX_STATUS_RUNNING
    assert listed[lose.sandbox_id].status == pb.SANDBOX_STATUS_ERROR and listed[lose.sandbox_id].error
    assert (await sh(agent, keep, "cat /root/mark")).stdout == b"kept\n"
    procs = (await agent.stub.ListProcesses(pb.SandboxRef(sandbox_id=keep.sandbox_id), metadata=agent.md)).processes
    assert any(p.tag == "survivor" and p.pid == bg.pid for p in procs)
    # The lost capsule's network slot was freed at the restart, and may be a new capsule's now: removing the
    # lost one's record must not take the new one's network with it.
    newcomer = await create(agent)
    await agent.stub.DestroySandbox(pb.SandboxRef(sandbox_id=lose.sandbox_id), metadata=agent.md)
    assert (await sh(agent, newcomer, "echo fine")).stdout == b"fine\n"
    fresh = await create(agent)  # and the spare slots made meanwhile are whole
    for sid in (keep.sandbox_id, newcomer.sandbox_id, fresh.sandbox_id):
        await agent.stub.DestroySandbox(pb.SandboxRef(sandbox_id=sid), metadata=agent.md)


async def test_calls_without_the_token_are_refused(agent: AgentHandle) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await agent.stub.ListSandboxes(pb.Empty())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
