"""A paused capsule runs no guest code: from the moment a pause is answered until the resume, on every runtime."""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest

from tests.guests import guest
from wrenn_server.proto._generated import hostagent_pb2 as pb

from .calls import create, sh
from .conftest import AgentHandle

pytestmark = pytest.mark.runtime

PAUSE_SEC = 3.0
SLACK = 0.02  # the clocks' reading itself
CHECKPOINT_AFTER_SEC = 0.5
# A tick every 50 ms, stamped with the guest's clock; the loop is a shell builtin apart from `date`.
TICKER = "while true; do date +%s.%N >> /root/ticks; sleep 0.05; done"


async def clock_offset(agent: AgentHandle, box: pb.SandboxInfo) -> tuple[float, float]:
    """How far the host's clock is ahead of the guest's, and by how much that figure may be off (half the
    exec's round trip: the guest read its clock somewhere in it)."""
    before = time.time()
    stamp = float((await sh(agent, box, "date +%s.%N")).stdout)
    after = time.time()
    return (before + after) / 2 - stamp, (after - before) / 2


async def ticks(agent: AgentHandle, box: pb.SandboxInfo) -> list[float]:
    return [float(line) for line in (await sh(agent, box, "cat /root/ticks")).stdout.split()]


async def test_a_paused_capsule_runs_no_guest_code(agent: AgentHandle) -> None:
    """Between the pause's answer and the resume, the guest's own clock shows no tick (its stamps jump by the
    pause, or its clock stood still for it), and the host CPU time of the guest's processes does not grow:
    for a guest that booted and for one restored from a checkpoint (the warm pool's)."""
    manager = agent.agent.manager
    assert manager is not None
    size = {"vcpus": 1, "memory_mb": 448}  # a size of its own: the first capsule boots
    for prepared in (agent.settings.dir / "images" / "minimal" / "current").resolve().glob("prepared/1x448x*"):
        shutil.rmtree(prepared)  # made by an earlier run
    booted = await create(agent, **size)
    for _ in range(600):  # prepared, then a guest restored from it kept warm
        if any(guests for key, guests in manager.pool.ready.items() if key.memory_mb == 448):
            break
        await asyncio.sleep(0.1)
    restored = await create(agent, **size)
    assert (booted.metadata["start"], restored.metadata["start"]) == ("boot", "pool")
    for box in (booted, restored):
        await agent.stub.StartBackground(
            pb.ExecRequest(sandbox_id=box.sandbox_id, cmd="/bin/sh", args=["-c", TICKER], tag="ticker"),
            metadata=agent.md,
        )
        for checkpointed in (False, True):
            await stays_still_while_paused(agent, box, checkpointed)
        await agent.stub.DestroySandbox(pb.SandboxRef(sandbox_id=box.sandbox_id), metadata=agent.md)


async def stays_still_while_paused(agent: AgentHandle, box: pb.SandboxInfo, checkpointed: bool) -> None:
    """One pause: the guest stays frozen in memory throughout, or is checkpointed to disk half-way through."""
    manager = agent.agent.manager
    assert manager is not None
    ref = pb.SandboxRef(sandbox_id=box.sandbox_id)
    name, workdir = guest(agent.settings.dir, box.sandbox_id)
    start = len(await ticks(agent, box))
    while len(await ticks(agent, box)) < start + 5:
        await asyncio.sleep(0.1)
    manager.checkpoint_after_sec = CHECKPOINT_AFTER_SEC if checkpointed else 3600.0
    try:
        offset_before, error_before = await clock_offset(agent, box)
        cpu_before_pause = await manager.runtime.usage(name)
        assert cpu_before_pause is not None and cpu_before_pause.cpu_seconds > 0
        assert (await agent.stub.PauseSandbox(ref, metadata=agent.md)).status == pb.SANDBOX_STATUS_PAUSED
        paused_at = time.time()
        frozen = await manager.runtime.usage(name)
        await asyncio.sleep(PAUSE_SEC)
        still = await manager.runtime.usage(name)
        checkpoint_window = (0.0, 0.0)
        if checkpointed:
            image = workdir / "checkpoint" / "checkpoint.img"
            assert image.is_file(), "no checkpoint during the pause"
            # The one moment a restored gVisor guest may still run: from the checkpoint's start until its own
            # stop of the guest's tasks (milliseconds; docs/lifecycle.md). Nowhere else in the pause.
            checkpoint_window = (paused_at + CHECKPOINT_AFTER_SEC - 0.2, image.stat().st_mtime + SLACK)
        else:
            assert frozen is not None and still is not None
            assert still.cpu_seconds - frozen.cpu_seconds < 0.02, "the guest's processes used CPU while paused"
        resumed_at = time.time()
        assert (await agent.stub.ResumeSandbox(ref, metadata=agent.md)).status == pb.SANDBOX_STATUS_RUNNING
        offset_after, error_after = await clock_offset(agent, box)
        count = len(await ticks(agent, box))
        while len(await ticks(agent, box)) < count + 5:  # it goes on after the resume
            await asyncio.sleep(0.1)
    finally:
        manager.checkpoint_after_sec = agent.settings.checkpoint_after_sec
    stamps = (await ticks(agent, box))[start:]
    assert stamps == sorted(stamps) and len(stamps) > 10
    # Guest stamps put on the host's clock: before the pause with the offset measured just before it, after the
    # resume with the one measured just after it (a VM's clock may stand still while it is stopped, as QEMU's
    # does under TCG, and drift; gVisor's is the host's). A stamp after the pause by the first and before the
    # resume by the second was written while the capsule was paused.
    during = [
        round(stamp + offset_before - paused_at, 3)
        for stamp in stamps
        if stamp + offset_before > paused_at + error_before + SLACK
        and stamp + offset_after < resumed_at - error_after - SLACK
        and not checkpoint_window[0] <= stamp + offset_before <= checkpoint_window[1]
    ]
    assert not during, f"guest code ran while paused: ticks {during} s after the pause's answer"
    assert stamps[-1] + offset_after > resumed_at  # and it goes on after the resume
