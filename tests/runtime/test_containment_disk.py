"""Containment, disk: a capsule's writes stop at its `disk_size_mb` (ENOSPC inside, the capsule lives on), on
every runtime that declares `disk_size_limit`; the space comes back when files go; the limit holds across pause
and resume, a snapshot and the capsules made from it, and an agent restart; destroying a capsule leaves no
mount or loop device; and a host short of disk refuses new capsules, rather than failing later."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import uuid
from pathlib import Path

import grpc
import pytest

from tests.guests import guest
from wrenn_server.proto._generated import hostagent_pb2 as pb

from .calls import create, new_id, sh
from .conftest import AgentHandle

pytestmark = pytest.mark.runtime

# Small, yet over the image's own filesystem, which a microVM's disk (the whole root disk) is never smaller than.
DISK_MB = 1024
MiB = 2**20
# Writes until the disk is full (and flushed); prints the MiB written. `dd` stops at the first failed write.
FILL = (
    "dd if=/dev/zero of={path} bs=1M 2>/tmp/dd.err; sync; echo $(( $(stat -c %s {path}) / 1048576 )); "
    "cat /tmp/dd.err >&2"
)


@pytest.fixture
def limited(agent: AgentHandle) -> None:
    manager = agent.agent.manager
    assert manager is not None
    if not manager.runtime.capabilities.disk_size_limit:
        pytest.skip(f"runtime {manager.runtime.name} does not limit a capsule's disk on this host")


async def fill(agent: AgentHandle, box: pb.SandboxInfo, path: str) -> int:
    """Write zeros to `path` until the disk says no: the MiB written; the write must fail with ENOSPC."""
    out = await sh(agent, box, FILL.format(path=path), timeout_sec=600)
    assert b"No space left on device" in out.stderr, out.stderr
    return int(out.stdout)


async def disk_used_mb(agent: AgentHandle, box: pb.SandboxInfo) -> float:
    info = await agent.stub.GetSandbox(pb.SandboxRef(sandbox_id=box.sandbox_id), metadata=agent.md)
    return info.disk_used_bytes / MiB


async def destroy(agent: AgentHandle, *boxes: pb.SandboxInfo) -> None:
    for box in boxes:
        await agent.stub.DestroySandbox(pb.SandboxRef(sandbox_id=box.sandbox_id), metadata=agent.md)


async def test_a_full_disk_says_enospc_inside_and_the_capsule_lives_on(agent: AgentHandle, limited: None) -> None:
    box = await create(agent, memory_mb=256, disk_size_mb=DISK_MB)
    neighbour = await create(agent, memory_mb=256, disk_size_mb=DISK_MB)
    try:
        await sh(agent, box, "echo mine > /root/mark")
        before = await disk_used_mb(agent, box)
        written = await fill(agent, box, "/root/fill")
        assert DISK_MB / 2 < written <= DISK_MB  # a microVM's disk holds its template's files too
        # The capsule, its envd and its files live on; so does its neighbour.
        assert (await sh(agent, box, "cat /root/mark")).stdout == b"mine\n"
        assert (await sh(agent, neighbour, "echo fine")).stdout == b"fine\n"
        used = await disk_used_mb(agent, box)
        assert written - 8 <= used - before <= written + 8, (before, used, written)
        # The space comes back when the file goes, and can be written again.
        assert (await sh(agent, box, "rm /root/fill && sync")).exit_code == 0
        for _ in range(100):  # a microVM's guest trims what it freed, and its host may take a moment to follow
            if (after := await disk_used_mb(agent, box)) < before + 8:
                break
            await asyncio.sleep(0.2)
        assert after < before + 8, (before, after)
        again = await sh(agent, box, "dd if=/dev/zero of=/root/again bs=1M count=200 && echo done")
        assert again.exit_code == 0 and again.stdout.endswith(b"done\n"), again.stderr
    finally:
        await destroy(agent, box, neighbour)


async def test_the_disk_limit_holds_across_pause_restart_and_snapshot(agent: AgentHandle, limited: None) -> None:
    box = await create(agent, memory_mb=256, disk_size_mb=DISK_MB)
    ref = pb.SandboxRef(sandbox_id=box.sandbox_id)
    manager = agent.agent.manager
    assert manager is not None
    children: list[pb.SandboxInfo] = []
    try:
        await sh(agent, box, "dd if=/dev/zero of=/root/half bs=1M count=300")
        # A capsule made from a snapshot has the template's files, and a disk of its own size for its writes.
        team, template_id = str(uuid.uuid4()), str(uuid.uuid4())
        await agent.stub.SnapshotSandbox(
            pb.SnapshotRequest(sandbox_id=box.sandbox_id, team_id=team, template_id=template_id), metadata=agent.md
        )
        child = await agent.stub.CreateSandbox(
            pb.CreateSandboxRequest(
                sandbox_id=new_id(),
                template="snap",
                template_id=template_id,
                team_id=team,
                vcpus=1,
                memory_mb=256,
                disk_size_mb=DISK_MB,
            ),
            metadata=agent.md,
        )
        children.append(child)
        assert (await sh(agent, child, "stat -c %s /root/half")).stdout == f"{300 * MiB}\n".encode()
        assert 100 < await fill(agent, child, "/root/more") <= DISK_MB
        assert (await sh(agent, box, "echo source lives")).stdout == b"source lives\n"
        await destroy(agent, child)
        children.clear()
        await agent.stub.DeleteTemplate(pb.TemplateRef(team_id=team, template_id=template_id), metadata=agent.md)
        # Pause until the guest is checkpointed to disk, then resume it from there.
        manager.checkpoint_after_sec = 0.2
        _name, workdir = guest(agent.settings.dir, box.sandbox_id)
        await agent.stub.PauseSandbox(ref, metadata=agent.md)
        for _ in range(200):
            if (workdir / "checkpoint" / "checkpoint.img").is_file():
                break
            await asyncio.sleep(0.1)
        assert (workdir / "checkpoint" / "checkpoint.img").is_file(), "no checkpoint after the delay"
        await agent.stub.ResumeSandbox(ref, metadata=agent.md)
        assert 100 < await fill(agent, box, "/root/more") <= DISK_MB - 300
        await sh(agent, box, "rm /root/more")
        # An agent restart re-adopts the capsule with its disk and its limit.
        await agent.agent.stop()
        await agent.restart()
        assert 100 < await fill(agent, box, "/root/more") <= DISK_MB - 300
        await sh(agent, box, "rm /root/more")
    finally:
        manager = agent.agent.manager
        assert manager is not None
        manager.checkpoint_after_sec = agent.settings.checkpoint_after_sec
        await destroy(agent, box, *children)


def loop_devices() -> dict[str, str]:
    """The host's loop devices and their backing files (`losetup`)."""
    listed = json.loads(subprocess.run(["losetup", "-J"], capture_output=True, text=True, check=True).stdout or "{}")
    return {d["name"]: str(d.get("back-file", "")) for d in listed.get("loopdevices", [])}


def loop_devices_under(path: Path) -> list[str]:
    return [name for name, backing in loop_devices().items() if backing.startswith(f"{path}/")]


def mounts_naming(name: str) -> list[str]:
    return [line for line in Path("/proc/mounts").read_text().splitlines() if name in line]


async def test_destroy_leaves_no_mount_or_loop_device(agent: AgentHandle, limited: None) -> None:
    box = await create(agent, memory_mb=256, disk_size_mb=DISK_MB)
    name, workdir = guest(agent.settings.dir, box.sandbox_id)
    await sh(agent, box, "dd if=/dev/zero of=/root/some bs=1M count=20")
    held = loop_devices_under(workdir)
    assert held or not (workdir / "disk.ext4").exists()  # a runtime whose disk is a loop-mounted file shows it
    disk_mount = (workdir / "fs").resolve() if (workdir / "fs").is_symlink() else None
    await destroy(agent, box)
    assert not workdir.exists()
    assert loop_devices_under(workdir) == []
    assert mounts_naming(name) == []
    if disk_mount is not None:
        assert mounts_naming(str(disk_mount)) == [] and not disk_mount.exists()
    assert not set(held) & set(loop_devices())  # detached, not only renamed


async def test_a_host_short_of_disk_refuses_new_capsules(agent: AgentHandle) -> None:
    manager = agent.agent.manager
    assert manager is not None
    free_mb = shutil.disk_usage(agent.settings.dir).free // MiB
    manager.disk_reserve_mb = free_mb + 1024  # as if the disk had less free than the host keeps for itself
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await create(agent, memory_mb=256, disk_size_mb=DISK_MB)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "WRENN_DISK_RESERVE_MB" in (refused.value.details() or "")
        listed = (await agent.stub.ListSandboxes(pb.Empty(), metadata=agent.md)).sandboxes
        assert not any(s.status == pb.SANDBOX_STATUS_ERROR and "reserve" in s.error for s in listed)
    finally:
        manager.disk_reserve_mb = agent.settings.disk_reserve_mb
    box = await create(agent, memory_mb=256, disk_size_mb=DISK_MB)  # with room again, creates go on
    assert (await sh(agent, box, "echo up")).stdout == b"up\n"
    await destroy(agent, box)


async def test_a_checkpointed_capsule_comes_back_with_its_disk_after_a_host_reboot(
    agent: AgentHandle, limited: None
) -> None:
    """A reboot of the host takes every mount: a paused (checkpointed) capsule's disk is mounted again when it
    resumes, with its files and its limit."""
    box = await create(agent, memory_mb=256, disk_size_mb=DISK_MB)
    ref = pb.SandboxRef(sandbox_id=box.sandbox_id)
    manager = agent.agent.manager
    assert manager is not None
    try:
        await sh(agent, box, "echo kept > /root/kept && dd if=/dev/zero of=/root/half bs=1M count=300")
        manager.checkpoint_after_sec = 0.2
        name, workdir = guest(agent.settings.dir, box.sandbox_id)
        await agent.stub.PauseSandbox(ref, metadata=agent.md)
        for _ in range(200):
            if (workdir / "checkpoint" / "checkpoint.img").is_file():
                break
            await asyncio.sleep(0.1)
        assert (workdir / "checkpoint" / "checkpoint.img").is_file(), "no checkpoint after the delay"
        await agent.agent.stop()
        # The reboot, as far as the capsule's files go: its mounts are gone (the overlay first, then its disk).
        disk = (workdir / "fs").resolve() if (workdir / "fs").is_symlink() else None
        for target in [workdir / "rootfs", *([disk] if disk is not None else [])]:
            if target.is_mount():
                subprocess.run(["umount", str(target)], check=True)
        assert mounts_naming(name) == [] and (disk is None or not disk.is_mount())
        await agent.restart()
        assert (await agent.stub.ResumeSandbox(ref, metadata=agent.md)).status == pb.SANDBOX_STATUS_RUNNING
        assert (await sh(agent, box, "cat /root/kept")).stdout == b"kept\n"
        assert 100 < await fill(agent, box, "/root/more") <= DISK_MB - 300
    finally:
        manager = agent.agent.manager
        assert manager is not None
        manager.checkpoint_after_sec = agent.settings.checkpoint_after_sec
        await destroy(agent, box)


async def test_every_way_a_capsule_starts_gives_it_its_own_limited_disk(agent: AgentHandle, limited: None) -> None:
    """A boot, a restore of the template's prepared checkpoint, a warm guest from the pool: each capsule's
    writes stop at its own size, and one's full disk is not another's."""
    manager = agent.agent.manager
    assert manager is not None
    size = {"vcpus": 1, "memory_mb": 320, "disk_size_mb": DISK_MB}  # a size no other test uses: it starts cold
    for prepared in (agent.settings.dir / "images" / "minimal" / "current").resolve().glob("prepared/1x320x*"):
        shutil.rmtree(prepared)  # made by an earlier run
    boxes = [await create(agent, **size)]
    for _ in range(600):  # prepared, then one guest restored from it
        if any(guests for key, guests in manager.pool.ready.items() if key.memory_mb == 320):
            break
        await asyncio.sleep(0.1)
    boxes += [await create(agent, **size), await create(agent, **size)]
    try:
        starts = [box.metadata["start"] for box in boxes]
        assert starts[:2] == ["boot", "pool"] and starts[2] in ("pool", "restore"), starts
        for box in boxes:
            assert DISK_MB / 2 < await fill(agent, box, "/root/fill") <= DISK_MB
        for box in boxes:
            assert (await sh(agent, box, "rm /root/fill && echo freed")).stdout == b"freed\n"
    finally:
        await destroy(agent, *boxes)


async def test_an_agent_that_stops_leaves_no_disk_of_its_own_behind(agent: AgentHandle, limited: None) -> None:
    """Disks made ahead for capsules to come (gVisor's spares) go with the agent; the capsules' stay."""
    box = await create(agent, memory_mb=256, disk_size_mb=DISK_MB)
    disks = agent.settings.dir / "disks"
    _name, workdir = guest(agent.settings.dir, box.sandbox_id)
    stopped = False
    try:
        for _ in range(100):  # the spares of this size, made after the create
            if len(loop_devices_under(disks)) >= 2:
                break
            await asyncio.sleep(0.1)
        kept = loop_devices_under(workdir)
        own = f"{(workdir / 'fs').resolve()} " if (workdir / "fs").is_symlink() else None  # where its disk is
        await agent.agent.stop()
        stopped = True
        assert loop_devices_under(disks) == []
        assert [line for line in mounts_naming(f"{disks}/") if own is None or own not in line] == []
        assert loop_devices_under(workdir) == kept  # the capsule's own disk stays, mounted
        await agent.restart()
        stopped = False
        assert (await sh(agent, box, "echo on")).stdout == b"on\n"
    finally:
        if stopped:  # the suite's other tests share this agent
            await agent.restart()
        await destroy(agent, box)
