"""A capsule's own excess ends only its own processes: a memory hog is killed (exit 137, reason `oom`), a fork
bomb meets the task limit, and in both cases the capsule runs on with its files while a neighbour answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from wrenn_server.proto._generated import hostagent_pb2 as pb

from .calls import create, sh
from .conftest import AgentHandle

pytestmark = pytest.mark.runtime

MEMORY_MB = 256
HOG = "import sys\nb = []\nwhile True: b.append(bytearray({step} << 20))\n"
# Each function calls itself twice, in the background: the number of tasks doubles until forks fail.
FORK_BOMB = "f(){ f | f & }; f"


@pytest.fixture(scope="module")
async def pair(agent: AgentHandle) -> AsyncIterator[tuple[pb.SandboxInfo, pb.SandboxInfo]]:
    """A small capsule to abuse and a neighbour on the same host."""
    small = await create(agent, memory_mb=MEMORY_MB, disk_size_mb=512)
    neighbour = await create(agent, memory_mb=MEMORY_MB, disk_size_mb=512)
    yield small, neighbour
    for info in (small, neighbour):
        await agent.stub.DestroySandbox(pb.SandboxRef(sandbox_id=info.sandbox_id), metadata=agent.md)


async def read_text(agent: AgentHandle, info: pb.SandboxInfo, path: str) -> str:
    """A file read by envd itself: it needs no new process in the capsule, so it works while the bomb runs."""
    read = agent.stub.ReadFileStream(pb.PathRequest(sandbox_id=info.sandbox_id, path=path), metadata=agent.md)
    return b"".join([chunk.data async for chunk in read]).decode()


async def lives_on(agent: AgentHandle, info: pb.SandboxInfo, neighbour: pb.SandboxInfo, marker: str) -> None:
    """The capsule is still running, its file and its resident process are still there, and the neighbour
    still answers."""
    got = await agent.stub.GetSandbox(pb.SandboxRef(sandbox_id=info.sandbox_id), metadata=agent.md)
    assert got.status == pb.SANDBOX_STATUS_RUNNING
    out = await sh(agent, info, f"cat /root/{marker}; pgrep -f 'sleep 3600' >/dev/null && echo resident")
    assert out.stdout == f"{marker}\nresident\n".encode(), out
    assert await read_text(agent, info, f"/root/{marker}") == f"{marker}\n"
    assert (await sh(agent, neighbour, "echo here")).stdout == b"here\n"


async def prepare(agent: AgentHandle, info: pb.SandboxInfo, marker: str) -> None:
    """A file and a resident process that must outlive what comes next."""
    assert (
        await sh(agent, info, f"echo {marker} > /root/{marker} && cat /root/{marker}")
    ).stdout == f"{marker}\n".encode()
    started = await agent.stub.StartBackground(
        pb.ExecRequest(sandbox_id=info.sandbox_id, cmd="/bin/sleep", args=["3600"], tag=f"resident-{marker}"),
        metadata=agent.md,
    )
    assert started.pid > 0


async def test_the_guest_sees_its_own_size(agent: AgentHandle, pair: tuple[pb.SandboxInfo, pb.SandboxInfo]) -> None:
    """Programs that size themselves (a JVM, a build's -j) read /proc/meminfo or the cgroup's limit."""
    small, _ = pair
    out = await sh(agent, small, "grep MemTotal /proc/meminfo; cat /proc/self/cgroup")
    total_mb = int(out.stdout.split()[1]) // 1024
    assert MEMORY_MB * 0.85 <= total_mb <= MEMORY_MB, out.stdout
    # The limit the capsule's processes live under, in whichever cgroup version the guest's kernel offers.
    path = out.stdout.decode().splitlines()[-1].split(":", 2)[2]
    assert path.endswith("wrenn-user"), out.stdout
    script = f"cat /sys/fs/cgroup{path}/memory.max 2>/dev/null || cat /sys/fs/cgroup{path}/memory.limit_in_bytes"
    limit = await sh(agent, small, script)
    assert MEMORY_MB * 0.85 <= int(limit.stdout) >> 20 <= MEMORY_MB, limit


@pytest.mark.parametrize("step_mb", [64, 8])
async def test_a_memory_hog_is_killed_and_the_capsule_lives_on(
    agent: AgentHandle, pair: tuple[pb.SandboxInfo, pb.SandboxInfo], step_mb: int
) -> None:
    small, neighbour = pair
    marker = f"hog{step_mb}"
    await prepare(agent, small, marker)
    out = await agent.stub.Exec(
        pb.ExecRequest(
            sandbox_id=small.sandbox_id, cmd="python3", args=["-c", HOG.format(step=step_mb)], timeout_sec=120
        ),
        metadata=agent.md,
    )
    assert out.exit_code == 137, out
    assert out.end_reason == "oom", out
    await lives_on(agent, small, neighbour, marker)


async def test_a_hog_in_a_stream_ends_with_the_reason(
    agent: AgentHandle, pair: tuple[pb.SandboxInfo, pb.SandboxInfo]
) -> None:
    small, neighbour = pair
    await prepare(agent, small, "streamed")
    call = agent.stub.ExecStream(
        pb.ExecRequest(sandbox_id=small.sandbox_id, cmd="/bin/sh", args=["-c", f"python3 -c '{HOG.format(step=32)}'"]),
        metadata=agent.md,
    )
    events = [e async for e in call]
    assert events[0].WhichOneof("event") == "start"
    end = events[-1]
    assert end.WhichOneof("event") == "end"
    assert end.end.exit_code == 137 and end.end.end_reason == "oom", end
    await lives_on(agent, small, neighbour, "streamed")


# Samples the user cgroup's task count into a file with shell builtins alone (no fork: none is left during the
# bomb), keeping the peak: `read -t` on a FIFO that never delivers is the pause.
WATCH = """
cg=/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)
mkfifo /tmp/tick; exec 3<>/tmp/tick; peak=0; read -r limit < "$cg/pids.max"
while :; do
  read -r n < "$cg/pids.current"; [ "$n" -gt "$peak" ] && peak=$n
  echo "$n $peak $limit" > /root/pids.now
  read -t 0.05 -u 3
done
"""


async def task_counts(agent: AgentHandle, info: pb.SandboxInfo) -> tuple[int, int, int]:
    """(tasks now, peak, limit) of the capsule's processes, as the watcher last wrote them. The watcher rewrites
    the file all the time, so a read may meet it empty, or cut short (envd ends a read of a file that shrank)."""
    for _ in range(100):
        try:
            now, peak, limit = (int(v) for v in (await read_text(agent, info, "/root/pids.now")).split())
            return now, peak, limit
        except ValueError:
            pass
        except grpc.aio.AioRpcError as exc:
            if "mid-answer" not in (exc.details() or ""):
                raise
        await asyncio.sleep(0.01)
    raise AssertionError("the task watcher's file could not be read")


async def test_a_fork_bomb_meets_the_task_limit_and_can_be_stopped(
    agent: AgentHandle, pair: tuple[pb.SandboxInfo, pb.SandboxInfo]
) -> None:
    small, neighbour = pair
    await prepare(agent, small, "bomb")
    await agent.stub.StartBackground(
        pb.ExecRequest(sandbox_id=small.sandbox_id, cmd="/bin/bash", args=["-c", WATCH], tag="pids-watch"),
        metadata=agent.md,
    )
    for _ in range(100):
        if (await sh(agent, small, "test -s /root/pids.now && echo ok")).stdout == b"ok\n":
            break
        await asyncio.sleep(0.05)
    now, _, limit = await task_counts(agent, small)
    assert limit > 0 and now < 10
    bomb = await agent.stub.StartBackground(
        pb.ExecRequest(sandbox_id=small.sandbox_id, cmd="/bin/bash", args=["-c", FORK_BOMB], tag="bomb"),
        metadata=agent.md,
    )
    assert bomb.pid > 0
    # The bomb fills the task limit and stops there: further forks fail (EAGAIN). envd ends a bomb that stays
    # near the limit (reason `pids`), so a slow guest may see that before a command of ours is refused.
    refusal, peak = "", 0
    for _ in range(600):
        peak = (await task_counts(agent, small))[1]
        try:
            await sh(agent, small, "true")
        except grpc.aio.AioRpcError as exc:
            refusal = exc.details() or ""
            break
        if peak >= limit * 0.9:
            break
        await asyncio.sleep(0.05)
    assert "resource temporarily unavailable" in refusal.lower() or limit * 0.9 <= peak <= limit, (refusal, peak)
    # Meanwhile the capsule runs, envd answers and the files can be read; the neighbour answers too.
    got = await agent.stub.GetSandbox(pb.SandboxRef(sandbox_id=small.sandbox_id), metadata=agent.md)
    assert got.status == pb.SANDBOX_STATUS_RUNNING
    assert await read_text(agent, small, "/root/bomb") == "bomb\n"
    assert (await sh(agent, neighbour, "echo here")).stdout == b"here\n"
    # Stopped through the API: SIGKILL to the bomb's process group, which its background shells share.
    # A shell forked meanwhile may still be starting, so the kill is repeated until none is left.
    now = limit
    for _ in range(100):
        await agent.stub.KillProcess(
            pb.KillProcessRequest(process=pb.ProcessRef(sandbox_id=small.sandbox_id, pid=bomb.pid), signal="SIGKILL"),
            metadata=agent.md,
        )
        await asyncio.sleep(0.1)
        now = (await task_counts(agent, small))[0]
        if now < 10:  # the watcher, the resident sleeps and envd's process helper
            break
    assert now < 10
    await lives_on(agent, small, neighbour, "bomb")
