"""What a capsule is given, on every runtime: memory, vCPUs and the CPU time behind them, sizes the host
cannot give refused, usage sampled."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import grpc
import pytest

from tests.guests import guest
from wrenn_server.hostagent.runtimes.base import Capabilities
from wrenn_server.proto._generated import hostagent_pb2 as pb

from .calls import create, new_id, sh
from .conftest import AgentHandle

pytestmark = pytest.mark.runtime


async def test_memory_limit_is_applied(agent: AgentHandle) -> None:
    info = await create(agent)
    try:
        out = await sh(agent, info, "grep MemTotal /proc/meminfo")
        total_mb = int(out.stdout.split()[1]) // 1024
        # A guest kernel keeps some of its memory for itself (microVMs); gVisor reports the size asked.
        assert 512 * 0.85 <= total_mb <= 512 + 256, out.stdout
    finally:
        await agent.stub.DestroySandbox(pb.SandboxRef(sandbox_id=info.sandbox_id), metadata=agent.md)


def host_cpu_quota(name: str) -> tuple[int, int]:
    """The CPU time a guest's host cgroup may use per period (microseconds), cgroup v1 or v2."""
    v1 = Path("/sys/fs/cgroup/cpu/wrenn") / name
    if v1.is_dir():
        return int((v1 / "cpu.cfs_quota_us").read_text()), int((v1 / "cpu.cfs_period_us").read_text())
    quota, period = (Path("/sys/fs/cgroup/wrenn") / name / "cpu.max").read_text().split()
    return int(quota), int(period)


async def test_a_capsule_uses_the_vcpus_it_was_given(
    agent: AgentHandle, capsule: pb.SandboxInfo, runtime_name: str, capabilities: Capabilities
) -> None:
    """A microVM's kernel has as many CPUs as asked. gVisor's sandbox is shown the host's CPUs (runsc's
    --cpu-num-from-quota would still show no fewer than two); its host cgroup lets it use only those asked for."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("the host has a single CPU: a capsule of two cannot be made, nor one told from the host")
    manager = agent.agent.manager
    assert manager is not None
    two = await create(agent, vcpus=2)
    try:
        for box, vcpus in ((capsule, 1), (two, 2)):
            name = guest(agent.settings.dir, box.sandbox_id)[0]
            out = await sh(agent, box, "nproc; grep -c ^processor /proc/cpuinfo")
            nproc, listed = map(int, out.stdout.split())
            assert nproc == listed, out.stdout
            if capabilities.guest_sees_vcpus:
                assert nproc == vcpus
            else:
                assert nproc >= vcpus
                quota, period = host_cpu_quota(name)
                assert quota == vcpus * period, (quota, period)
        # Busy loops for twice its vCPUs, as long as they last: the capsule gets no more CPU time than it has.
        name = guest(agent.settings.dir, capsule.sandbox_id)[0]
        before, began = await manager.runtime.usage(name), time.monotonic()
        burn = "for i in 1 2; do timeout 3 sh -c 'while :; do :; done' & done; wait"
        assert (await sh(agent, capsule, burn)).exit_code == 0
        after, ended = await manager.runtime.usage(name), time.monotonic()
        assert before is not None and after is not None
        used, wall = after.cpu_seconds - before.cpu_seconds, ended - began
        print(f"\n{runtime_name}: 1 vCPU used {used:.2f} s of CPU in {wall:.2f} s")
        assert used <= wall + 0.25, (used, wall)
    finally:
        await agent.stub.DestroySandbox(pb.SandboxRef(sandbox_id=two.sandbox_id), metadata=agent.md)


async def test_sizes_the_host_cannot_give_are_refused(agent: AgentHandle) -> None:
    for size, field in (
        ({"vcpus": 4096}, "vcpus"),
        ({"memory_mb": 64}, "memory_mb"),
        ({"memory_mb": 2**24}, "memory_mb"),
    ):
        sid = new_id()
        request = {"vcpus": 1, "memory_mb": 512, **size}
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await agent.stub.CreateSandbox(
                pb.CreateSandboxRequest(sandbox_id=sid, template="minimal", **request),  # type: ignore[arg-type]
                metadata=agent.md,
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (err.value.details() or "")
        listed = (await agent.stub.ListSandboxes(pb.Empty(), metadata=agent.md)).sandboxes
        assert sid not in {s.sandbox_id for s in listed}


async def test_metrics_are_sampled_and_flushed(agent: AgentHandle, capsule: pb.SandboxInfo) -> None:
    sid = capsule.sandbox_id
    await sh(agent, capsule, "head -c 2000000 /dev/urandom > /root/two-megs; sync; python3 -c 'sum(range(10**6))'")
    points: list[pb.MetricPoint] = []
    for _ in range(50):
        points = list(
            (
                await agent.stub.GetSandboxMetrics(pb.MetricsRequest(sandbox_id=sid, range="5m"), metadata=agent.md)
            ).points
        )
        if len(points) >= 3 and points[-1].disk_bytes >= 2_000_000:
            break
        await asyncio.sleep(0.5)
    assert len(points) >= 3
    assert all(p.mem_bytes > 0 and 0 <= p.cpu_pct <= 100 for p in points)
    assert points[-1].disk_bytes >= 2_000_000
    assert points == sorted(points, key=lambda p: p.timestamp_unix)
    flushed = await agent.stub.FlushSandboxMetrics(pb.SandboxRef(sandbox_id=sid), metadata=agent.md)
    assert len(flushed.points_10m) >= len(points)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await agent.stub.GetSandboxMetrics(pb.MetricsRequest(sandbox_id=sid, range="3w"), metadata=agent.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
