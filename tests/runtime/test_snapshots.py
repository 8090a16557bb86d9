"""Templates of running guests, on every runtime: snapshots continue where the source was, another runtime's
are refused, prepared checkpoints and the warm pool serve creates."""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid

import grpc
import pytest

from wrenn_server.hostagent.runtimes import RUNTIMES
from wrenn_server.hostagent.runtimes.base import Capabilities
from wrenn_server.proto._generated import hostagent_pb2 as pb

from .calls import create, new_id, sh
from .conftest import AgentHandle

pytestmark = pytest.mark.runtime


async def test_snapshot_template_starts_new_capsules_where_the_source_was(agent: AgentHandle) -> None:
    source = await create(agent)
    await sh(agent, source, "echo snap > /root/snap; echo mem > /tmp/snap")
    await agent.stub.StartBackground(
        pb.ExecRequest(sandbox_id=source.sandbox_id, cmd="sleep", args=["600"], tag="carried"), metadata=agent.md
    )
    team, template_id = str(uuid.uuid4()), str(uuid.uuid4())
    request = pb.SnapshotRequest(sandbox_id=source.sandbox_id, team_id=team, template_id=template_id)
    info = await agent.stub.SnapshotSandbox(request, metadata=agent.md)
    assert info.size_bytes > 0
    assert (await sh(agent, source, "cat /root/snap")).stdout == b"snap\n"  # the source goes on
    child = await agent.stub.CreateSandbox(
        pb.CreateSandboxRequest(
            sandbox_id=new_id(), template="snap", template_id=template_id, team_id=team, vcpus=1, memory_mb=512
        ),
        metadata=agent.md,
    )
    assert (await sh(agent, child, "cat /root/snap /tmp/snap")).stdout == b"snap\nmem\n"
    procs = (await agent.stub.ListProcesses(pb.SandboxRef(sandbox_id=child.sandbox_id), metadata=agent.md)).processes
    assert any(p.tag == "carried" for p in procs)
    await agent.stub.DeleteTemplate(pb.TemplateRef(team_id=team, template_id=template_id), metadata=agent.md)
    assert (await sh(agent, child, "echo still")).stdout == b"still\n"  # in use: kept until the child goes
    for box in (source, child):
        await agent.stub.DestroySandbox(pb.SandboxRef(sandbox_id=box.sandbox_id), metadata=agent.md)
    assert not (agent.settings.dir / "images" / "teams" / team / template_id).exists()


async def test_a_snapshot_of_another_runtime_is_refused_with_the_reason(
    agent: AgentHandle, capabilities: Capabilities
) -> None:
    team, template_id = str(uuid.uuid4()), str(uuid.uuid4())
    target = agent.settings.dir / "images" / "teams" / team / template_id
    other = next(name for name in RUNTIMES if name not in capabilities.restores)
    base = (agent.settings.dir / "images" / "minimal" / "current").resolve()
    target.mkdir(parents=True)
    try:
        (target / "snapshot.json").write_text(json.dumps({"base": str(base), "runtime": other}))
        sid = new_id()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await agent.stub.CreateSandbox(
                pb.CreateSandboxRequest(
                    sandbox_id=sid, template="elsewhere", template_id=template_id, team_id=team, vcpus=1, memory_mb=512
                ),
                metadata=agent.md,
            )
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"holds a {other} guest" in (err.value.details() or "")
        listed = (await agent.stub.ListSandboxes(pb.Empty(), metadata=agent.md)).sandboxes
        assert sid not in {s.sandbox_id for s in listed}
    finally:
        shutil.rmtree(target.parent)


async def test_creates_restore_a_prepared_checkpoint_or_take_a_warm_guest(agent: AgentHandle) -> None:
    """The first capsule of a template and size boots; the agent then prepares a checkpoint of it and keeps a
    guest restored from it warm: the next create takes that guest, the one after restores (or takes a refill)."""
    size = {"vcpus": 1, "memory_mb": 384}  # a size no other test uses: it starts cold
    for prepared in (agent.settings.dir / "images" / "minimal" / "current").resolve().glob("prepared/1x384x*"):
        shutil.rmtree(prepared)  # made by an earlier run
    first = await agent.stub.CreateSandbox(
        pb.CreateSandboxRequest(sandbox_id=new_id(), template="minimal", **size),
        metadata=agent.md,  # type: ignore[arg-type]
    )
    assert first.metadata["start"] == "boot"
    manager = agent.agent.manager
    assert manager is not None
    for _ in range(300):  # prepared, then one guest restored from it
        if any(guests for key, guests in manager.pool.ready.items() if key.memory_mb == 384):
            break
        await asyncio.sleep(0.1)
    hits = manager.pool.counters()["hits"]
    second = await agent.stub.CreateSandbox(
        pb.CreateSandboxRequest(sandbox_id=new_id(), template="minimal", **size),
        metadata=agent.md,  # type: ignore[arg-type]
    )
    assert second.metadata["start"] == "pool"
    third = await agent.stub.CreateSandbox(
        pb.CreateSandboxRequest(sandbox_id=new_id(), template="minimal", **size),
        metadata=agent.md,  # type: ignore[arg-type]
    )
    assert third.metadata["start"] in ("pool", "restore")
    ping = await agent.stub.Ping(pb.PingRequest(), metadata=agent.md)
    assert ping.pool["hits"] >= hits + 1
    for box in (first, second, third):
        # Each is a capsule of its own: its id, its files, memory as asked.
        out = await sh(agent, box, "cat /run/wrenn/.WRENN_SANDBOX_ID; echo $$ > /tmp/me; ls /tmp")
        assert out.stdout.decode().splitlines()[0] == box.sandbox_id
        assert out.stdout.decode().split().count("me") == 1
    await sh(agent, second, "echo only-here > /root/mine")
    assert (await sh(agent, third, "test -e /root/mine")).exit_code == 1
    for box in (first, second, third):
        await agent.stub.DestroySandbox(pb.SandboxRef(sandbox_id=box.sandbox_id), metadata=agent.md)
