"""Every end keeps its files and says why: a guest killed on its host (as the host's OOM killer or a crash would)
ends its capsule in `error` with the reason, the calls under way fail at once naming it, the disk stays, and the
capsule starts again from that disk (its files there, its processes gone). On every runtime."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from tests.guests import guest, kill_guest
from wrenn_server.proto._generated import hostagent_pb2 as pb

from .calls import create, new_id, sh
from .conftest import AgentHandle

pytestmark = pytest.mark.runtime

# Only so that a regression fails instead of hanging the suite for the command's own 600 s limit.
NO_HANG = 120.0


async def status_of(agent: AgentHandle, sandbox_id: str) -> pb.SandboxInfo:
    return await agent.stub.GetSandbox(pb.SandboxRef(sandbox_id=sandbox_id), metadata=agent.md)


async def test_a_guest_killed_on_its_host_ends_saying_why_and_starts_again_from_its_disk(agent: AgentHandle) -> None:
    box = await create(agent, memory_mb=256, disk_size_mb=512)
    sid = box.sandbox_id
    await sh(agent, box, "echo kept > /root/mark; mkdir -p /data && head -c 100000 /dev/urandom > /data/blob; sync")
    digest = (await sh(agent, box, "md5sum /data/blob")).stdout
    bg = await agent.stub.StartBackground(
        pb.ExecRequest(sandbox_id=sid, cmd="sleep", args=["600"], tag="gone-with-the-guest"), metadata=agent.md
    )
    # A call under way when the guest dies: it must fail, naming why, not wait out its own 600 s.
    inflight = asyncio.ensure_future(sh(agent, box, "sleep 600", timeout_sec=600))
    assert (await sh(agent, box, "echo alive")).stdout == b"alive\n"
    assert not inflight.done()
    _, workdir = guest(agent.settings.dir, sid)
    kill_guest(agent.settings.dir, sid)

    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await asyncio.wait_for(inflight, NO_HANG)
    print(f"\nthe call under way failed {loop.time() - began:.2f} s after the guest was killed")
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION, failed.value.details()
    assert "stopped on its own" in (failed.value.details() or "")

    info = await status_of(agent, sid)
    assert info.status == pb.SANDBOX_STATUS_ERROR
    assert "stopped on its own" in info.error
    with pytest.raises(grpc.aio.AioRpcError) as later:  # a later call is refused at once, saying why
        await sh(agent, box, "true")
    assert later.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "stopped on its own" in (later.value.details() or "")
    assert workdir.is_dir(), "the ended capsule's disk was removed"

    # Started again from its disk: its files are there, its processes are not.
    again = await agent.stub.ResumeSandbox(pb.SandboxRef(sandbox_id=sid), metadata=agent.md)
    assert again.status == pb.SANDBOX_STATUS_RUNNING and not again.error
    assert (await sh(agent, box, "cat /root/mark")).stdout == b"kept\n"
    assert (await sh(agent, box, "md5sum /data/blob")).stdout == digest
    procs = (await agent.stub.ListProcesses(pb.SandboxRef(sandbox_id=sid), metadata=agent.md)).processes
    assert procs is not None and bg.pid and not any(p.tag == "gone-with-the-guest" for p in procs)
    await sh(agent, box, "echo more > /root/more")  # and it works on as any capsule
    assert (await sh(agent, box, "cat /root/more")).stdout == b"more\n"

    await agent.stub.DestroySandbox(pb.SandboxRef(sandbox_id=sid), metadata=agent.md)
    assert not workdir.exists(), "a destroy asked for must remove the disk"


async def test_an_ended_capsule_keeps_its_disk_through_an_agent_restart(agent: AgentHandle) -> None:
    box = await create(agent, memory_mb=256, disk_size_mb=512)
    sid = box.sandbox_id
    await sh(agent, box, "echo kept > /root/mark; sync")
    _, workdir = guest(agent.settings.dir, sid)
    await agent.agent.stop()
    kill_guest(agent.settings.dir, sid)  # it dies while its agent is not running
    await asyncio.sleep(0.5)
    await agent.restart()
    info = await status_of(agent, sid)
    assert info.status == pb.SANDBOX_STATUS_ERROR and "host agent was not running" in info.error
    assert workdir.is_dir()
    again = await agent.stub.ResumeSandbox(pb.SandboxRef(sandbox_id=sid), metadata=agent.md)
    assert again.status == pb.SANDBOX_STATUS_RUNNING
    assert (await sh(agent, box, "cat /root/mark")).stdout == b"kept\n"
    await agent.stub.DestroySandbox(pb.SandboxRef(sandbox_id=sid), metadata=agent.md)


async def test_an_ended_capsule_can_be_snapshotted_from_its_disk(agent: AgentHandle) -> None:
    """Its files only (no guest state is left): a capsule created from the template boots on them."""
    box = await create(agent, memory_mb=256, disk_size_mb=512)
    await sh(agent, box, "echo kept > /root/mark; sync")
    kill_guest(agent.settings.dir, box.sandbox_id)
    with pytest.raises(grpc.aio.AioRpcError):
        await asyncio.wait_for(sh(agent, box, "sleep 600", timeout_sec=600), NO_HANG)
    assert (await status_of(agent, box.sandbox_id)).status == pb.SANDBOX_STATUS_ERROR
    team, template_id = str(uuid.uuid4()), str(uuid.uuid4())
    request = pb.SnapshotRequest(sandbox_id=box.sandbox_id, team_id=team, template_id=template_id)
    assert (await agent.stub.SnapshotSandbox(request, metadata=agent.md)).size_bytes > 0
    assert (await status_of(agent, box.sandbox_id)).status == pb.SANDBOX_STATUS_ERROR  # it stays ended
    child = await agent.stub.CreateSandbox(
        pb.CreateSandboxRequest(
            sandbox_id=new_id(), template="ended", template_id=template_id, team_id=team, vcpus=1, memory_mb=256,
            disk_size_mb=512,
        ),
        metadata=agent.md,
    )
    assert (await sh(agent, child, "cat /root/mark")).stdout == b"kept\n"
    await agent.stub.DeleteTemplate(pb.TemplateRef(team_id=team, template_id=template_id), metadata=agent.md)
    for sid in (box.sandbox_id, child.sandbox_id):
        await agent.stub.DestroySandbox(pb.SandboxRef(sandbox_id=sid), metadata=agent.md)
    assert not (agent.settings.dir / "images" / "teams" / team / template_id).exists()
