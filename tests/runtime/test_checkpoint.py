"""Pause and resume, on every runtime: a checkpoint keeps the whole guest (connections where the runtime can),
a damaged one ends in error, an agent that died half-way finds each capsule running or paused."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import grpc
import pytest

from tests.guests import guest
from tests.skips import skip_unless_capable
from wrenn_server.hostagent.launcher import Size
from wrenn_server.hostagent.network import Slot
from wrenn_server.hostagent.runtimes.base import Capabilities, RuntimeState
from wrenn_server.proto._generated import hostagent_pb2 as pb

from .calls import create, sh
from .conftest import AgentHandle

pytestmark = pytest.mark.runtime


async def test_pause_and_resume_keep_the_whole_guest(agent: AgentHandle) -> None:
    """Checkpoint and restore: memory, processes, files and address continue; a paused capsule refuses work,
    survives an agent restart, and is destroyed with everything it held."""
    box = await create(agent)
    ref = pb.SandboxRef(sandbox_id=box.sandbox_id)
    await sh(agent, box, "echo on-disk > /root/kept; echo in-tmpfs > /tmp/kept")
    counter = (  # renamed into place: a pause mid-write must not leave the file empty
        "i=0; while true; do i=$((i+1)); echo $i > /tmp/count.next; mv /tmp/count.next /tmp/count; sleep 0.1; done"
    )
    await agent.stub.StartBackground(
        pb.ExecRequest(sandbox_id=box.sandbox_id, cmd="/bin/sh", args=["-c", counter], tag="counter"),
        metadata=agent.md,
    )
    await asyncio.sleep(0.5)
    manager = agent.agent.manager
    assert manager is not None
    manager.checkpoint_after_sec = agent.settings.checkpoint_after_sec = 0.2  # the restarted agent's too
    name, workdir = guest(agent.settings.dir, box.sandbox_id)
    checkpoint = workdir / "checkpoint" / "checkpoint.img"
    for cycle in range(3):
        before = int((await sh(agent, box, "cat /tmp/count")).stdout)
        paused = await agent.stub.PauseSandbox(ref, metadata=agent.md)
        assert paused.status == pb.SANDBOX_STATUS_PAUSED and paused.host_ip == box.host_ip
        assert (await agent.stub.PauseSandbox(ref, metadata=agent.md)).status == pb.SANDBOX_STATUS_PAUSED  # idempotent
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await sh(agent, box, "true")
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        if cycle > 0:  # cycle 0 thaws the frozen guest; the others restore it from its checkpoint
            for _ in range(100):
                if checkpoint.is_file() and await agent.agent.manager.runtime.state(name) != RuntimeState.FROZEN:
                    break
                await asyncio.sleep(0.1)
            assert checkpoint.is_file(), "no checkpoint after the delay"
        if cycle == 1:
            await agent.agent.stop()
            await agent.restart()
            assert agent.agent.manager is not None
            listed = {
                s.sandbox_id: s.status
                for s in (await agent.stub.ListSandboxes(pb.Empty(), metadata=agent.md)).sandboxes
            }
            assert listed[box.sandbox_id] == pb.SANDBOX_STATUS_PAUSED
        resumed = await agent.stub.ResumeSandbox(ref, metadata=agent.md)
        assert resumed.status == pb.SANDBOX_STATUS_RUNNING
        again = await agent.stub.ResumeSandbox(ref, metadata=agent.md)
        assert again.status == pb.SANDBOX_STATUS_RUNNING  # idempotent
        after = int((await sh(agent, box, "cat /tmp/count")).stdout)
        assert after >= before
        await asyncio.sleep(0.4)
        assert int((await sh(agent, box, "cat /tmp/count")).stdout) > after
        assert (await sh(agent, box, "cat /root/kept /tmp/kept")).stdout == b"on-disk\nin-tmpfs\n"
    await agent.stub.PauseSandbox(ref, metadata=agent.md)
    await agent.stub.DestroySandbox(ref, metadata=agent.md)
    agent.settings.checkpoint_after_sec = 10.0
    assert not workdir.exists()


async def test_a_capsule_holding_a_connection_is_checkpointed_only_where_the_runtime_keeps_it(
    agent: AgentHandle,
) -> None:
    """A pause checkpoints a capsule with an open TCP connection where the runtime says it can (the connection
    then lives on after the resume), and keeps it frozen in memory where it cannot."""
    box = await create(agent)
    ref = pb.SandboxRef(sandbox_id=box.sandbox_id)
    manager = agent.agent.manager
    assert manager is not None
    name, workdir = guest(agent.settings.dir, box.sandbox_id)
    echo = "import socket\ns=socket.create_server(('0.0.0.0',7000))\nc,_=s.accept()\nwhile d:=c.recv(99): c.sendall(d)"
    await agent.stub.StartBackground(
        pb.ExecRequest(sandbox_id=box.sandbox_id, cmd="python3", args=["-c", echo]), metadata=agent.md
    )
    manager.checkpoint_after_sec = 0.2
    conn = None
    try:
        for _ in range(100):
            try:
                conn = socket.create_connection((box.host_ip, 7000), timeout=5)
                break
            except OSError:
                await asyncio.sleep(0.1)
        assert conn is not None
        conn.sendall(b"before")
        assert conn.recv(99) == b"before"
        await agent.stub.PauseSandbox(ref, metadata=agent.md)
        await asyncio.sleep(2)
        checkpointed = (workdir / "checkpoint" / "checkpoint.img").is_file()
        if manager.runtime.capabilities.checkpoint_keeps_connections:
            assert checkpointed and await manager.runtime.state(name) == "missing"  # its memory released
        else:
            assert not checkpointed and await manager.runtime.state(name) == RuntimeState.FROZEN  # frozen in memory
        await agent.stub.ResumeSandbox(ref, metadata=agent.md)
        conn.sendall(b"after")
        assert conn.recv(99) == b"after"
    finally:
        if conn is not None:
            conn.close()
        manager.checkpoint_after_sec = agent.settings.checkpoint_after_sec
        await agent.stub.DestroySandbox(ref, metadata=agent.md)


async def test_a_capsule_whose_checkpoint_is_damaged_ends_in_error(agent: AgentHandle) -> None:
    box = await create(agent)
    ref = pb.SandboxRef(sandbox_id=box.sandbox_id)
    name, workdir = guest(agent.settings.dir, box.sandbox_id)
    manager = agent.agent.manager
    assert manager is not None
    manager.checkpoint_after_sec = 0.1
    try:
        await agent.stub.PauseSandbox(ref, metadata=agent.md)
        image = workdir / "checkpoint" / "checkpoint.img"
        for _ in range(100):
            if image.is_file() and await manager.runtime.state(name) != RuntimeState.FROZEN:
                break
            await asyncio.sleep(0.1)
        image.write_bytes(b"not a checkpoint")
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await agent.stub.ResumeSandbox(ref, metadata=agent.md)
        assert "could not be restored" in (failed.value.details() or "")
        info = await agent.stub.GetSandbox(ref, metadata=agent.md)
        assert info.status == pb.SANDBOX_STATUS_ERROR and "could not be restored" in info.error
    finally:
        manager.checkpoint_after_sec = agent.settings.checkpoint_after_sec
        await agent.stub.DestroySandbox(ref, metadata=agent.md)
    assert not workdir.exists()


async def test_an_agent_that_died_half_way_finds_each_capsule_running_or_paused(agent: AgentHandle) -> None:
    """The agent dies between a runtime step of pause/checkpoint/resume and the record of it: the next agent
    finds the capsule running or paused (never lost, never half), its memory and files intact. Each case
    stops the agent, does the step by hand, and starts a new agent."""
    box = await create(agent)
    ref = pb.SandboxRef(sandbox_id=box.sandbox_id)
    await sh(agent, box, "echo alive > /tmp/mem; echo disk > /root/disk")
    name, workdir = guest(agent.settings.dir, box.sandbox_id)
    manager = agent.agent.manager
    assert manager is not None
    runtime = manager.runtime

    async def status_after_restart() -> pb.SandboxStatus:
        await agent.restart()
        return (await agent.stub.GetSandbox(ref, metadata=agent.md)).status

    async def intact() -> None:
        assert (await sh(agent, box, "cat /tmp/mem /root/disk")).stdout == b"alive\ndisk\n"

    # Frozen by a pause, the pause never recorded.
    await agent.agent.stop()
    await runtime.freeze(name)
    assert await status_after_restart() == pb.SANDBOX_STATUS_PAUSED
    await agent.stub.ResumeSandbox(ref, metadata=agent.md)
    await intact()

    # Thawed by a resume, the resume never recorded.
    await agent.stub.PauseSandbox(ref, metadata=agent.md)
    await agent.agent.stop()
    await runtime.thaw(name)
    assert await status_after_restart() == pb.SANDBOX_STATUS_RUNNING
    await intact()

    # Checkpointed (memory released), the checkpoint never recorded.
    await agent.stub.PauseSandbox(ref, metadata=agent.md)
    await agent.agent.stop()
    await runtime.checkpoint(name, workdir / "checkpoint")
    assert await status_after_restart() == pb.SANDBOX_STATUS_PAUSED
    await agent.stub.ResumeSandbox(ref, metadata=agent.md)
    await intact()

    # Restored from its checkpoint, the resume never recorded.
    await agent.stub.PauseSandbox(ref, metadata=agent.md)
    await agent.agent.stop()
    await runtime.checkpoint(name, workdir / "checkpoint")
    restarted = agent.agent.manager
    assert restarted is not None
    record = restarted.record_of(box.sandbox_id)
    await restarted.network.readdress(Slot(record.slot))
    size = Size(record.vcpus, record.memory_mb, record.disk_size_mb)
    spec = restarted.launcher.spec(record.name, Path(record.template_dir), size, Slot(record.slot))
    await runtime.restore(spec, workdir / "checkpoint")
    assert await status_after_restart() == pb.SANDBOX_STATUS_RUNNING
    await intact()
    assert not (workdir / "checkpoint").exists()
    await agent.stub.DestroySandbox(ref, metadata=agent.md)


async def test_a_guest_whose_memory_file_was_moved_half_way_continues(
    agent: AgentHandle, capabilities: Capabilities
) -> None:
    """The microVM pause moves the guest's memory file into the checkpoint before it writes `checkpoint.img`,
    and a resume moves it back before QEMU loads the state: an agent killed between the two finds it all the same."""
    skip_unless_capable(capabilities, "memory_file", "only a guest whose memory is a host file has one to move")
    box = await create(agent)
    ref = pb.SandboxRef(sandbox_id=box.sandbox_id)
    await sh(agent, box, "echo alive > /tmp/mem")
    name, workdir = guest(agent.settings.dir, box.sandbox_id)
    manager = agent.agent.manager
    assert manager is not None
    # Frozen, its memory file already in the checkpoint directory, no checkpoint.img yet.
    await agent.agent.stop()
    await manager.runtime.freeze(name)
    (workdir / "checkpoint").mkdir()
    (workdir / "mem").rename(workdir / "checkpoint" / "memory")
    await agent.restart()
    assert (await agent.stub.GetSandbox(ref, metadata=agent.md)).status == pb.SANDBOX_STATUS_PAUSED
    await agent.stub.ResumeSandbox(ref, metadata=agent.md)
    assert (await sh(agent, box, "cat /tmp/mem")).stdout == b"alive\n"
    # Checkpointed; a resume moved the memory file back and died before QEMU ran.
    await agent.stub.PauseSandbox(ref, metadata=agent.md)
    await agent.agent.stop()
    await manager.runtime.checkpoint(name, workdir / "checkpoint")
    (workdir / "checkpoint" / "memory").rename(workdir / "mem")
    await agent.restart()
    assert (await agent.stub.GetSandbox(ref, metadata=agent.md)).status == pb.SANDBOX_STATUS_PAUSED
    await agent.stub.ResumeSandbox(ref, metadata=agent.md)
    assert (await sh(agent, box, "cat /tmp/mem")).stdout == b"alive\n"
    await agent.stub.DestroySandbox(ref, metadata=agent.md)
