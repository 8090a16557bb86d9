"""Guests that fail, on every runtime: one that cannot boot, one that dies, one whose kernel panics."""

from __future__ import annotations

import shutil
import uuid

import grpc
import pytest

from tests.guests import kill_guest
from tests.skips import skip_unless_capable
from wrenn_server.hostagent.runtimes.base import Capabilities
from wrenn_server.proto._generated import hostagent_pb2 as pb

from .calls import create, new_id, sh, wait_for_error
from .conftest import AgentHandle

pytestmark = pytest.mark.runtime


async def test_a_guest_that_cannot_boot_fails_at_once_with_its_console(
    agent: AgentHandle, capabilities: Capabilities
) -> None:
    """A template with nothing to run (no init, a disk that is no filesystem): the create fails when the guest
    dies, not after the boot timeout, says why, and leaves nothing behind."""
    team, template_id = str(uuid.uuid4()), str(uuid.uuid4())
    target = agent.settings.dir / "images" / "teams" / team / template_id
    (target / "rootfs").mkdir(parents=True)
    (target / "vm").mkdir()
    real = (agent.settings.dir / "images" / "minimal" / "current").resolve() / "vm"
    for name in ("vmlinux", "initrd.img"):
        (target / "vm" / name).symlink_to(real / name)
    (target / "vm" / "rootfs.ext4").write_bytes(bytes(16 * 2**20))
    sid = new_id()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await agent.stub.CreateSandbox(
                pb.CreateSandboxRequest(
                    sandbox_id=sid, template="broken", template_id=template_id, team_id=team, vcpus=1, memory_mb=512
                ),
                metadata=agent.md,
            )
        detail = err.value.details() or ""
        assert err.value.code() == grpc.StatusCode.INTERNAL and "failed to start" in detail, detail
        if capabilities.guest_kernel:  # its own kernel says why, on its console
            assert "stopped while it was starting" in detail and "no root disk" in detail, detail
        listed = (await agent.stub.ListSandboxes(pb.Empty(), metadata=agent.md)).sandboxes
        assert sid not in {s.sandbox_id for s in listed}
        assert not (agent.settings.dir / "sandboxes" / sid).exists()
    finally:
        shutil.rmtree(target.parent)


async def test_a_guest_that_dies_ends_in_error_and_frees_what_it_held(agent: AgentHandle) -> None:
    box = await create(agent)
    record = agent.agent.manager.record_of(box.sandbox_id)  # type: ignore[union-attr]
    kill_guest(agent.settings.dir, box.sandbox_id)
    info = await wait_for_error(agent, box.sandbox_id)
    assert "stopped on its own" in info.error
    # Its guest is removed and its network slot given back (the slot's number may already serve a new spare).
    assert await agent.agent.manager.runtime.state(record.name) == "missing"  # type: ignore[union-attr]
    assert record.released and record.slot not in agent.agent.manager.network._used  # type: ignore[union-attr]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sh(agent, box, "true")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await agent.stub.DestroySandbox(pb.SandboxRef(sandbox_id=box.sandbox_id), metadata=agent.md)


async def test_a_guest_kernel_panic_shows_the_console_in_the_error(
    agent: AgentHandle, capabilities: Capabilities
) -> None:
    skip_unless_capable(capabilities, "guest_kernel", "a guest without a kernel of its own has no sysrq to panic it")
    box = await create(agent)
    await agent.stub.StartBackground(
        pb.ExecRequest(
            sandbox_id=box.sandbox_id, cmd="/bin/sh", args=["-c", "sleep 0.2; echo c > /proc/sysrq-trigger"]
        ),
        metadata=agent.md,
    )
    info = await wait_for_error(agent, box.sandbox_id)
    assert "Kernel panic" in info.error or "sysrq" in info.error.lower(), info.error
    await agent.stub.DestroySandbox(pb.SandboxRef(sandbox_id=box.sandbox_id), metadata=agent.md)
