"""Processes in a capsule through the host agent, on every runtime: exec, background processes, output
streams and their replay to a late connect, everyday tools."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from wrenn_server.proto._generated import hostagent_pb2 as pb

from .calls import read_to_end, sh
from .conftest import AgentHandle

pytestmark = pytest.mark.runtime


async def test_created_capsule_is_running_and_listed(agent: AgentHandle, capsule: pb.SandboxInfo) -> None:
    assert capsule.status == pb.SANDBOX_STATUS_RUNNING
    listed = {s.sandbox_id: s.status for s in (await agent.stub.ListSandboxes(pb.Empty(), metadata=agent.md)).sandboxes}
    assert listed[capsule.sandbox_id] == pb.SANDBOX_STATUS_RUNNING


async def test_exec_exit_codes_output_env_cwd(agent: AgentHandle, capsule: pb.SandboxInfo) -> None:
    out = await sh(
        agent,
        capsule,
        'echo out; echo err >&2; echo "$FOO $FROM_TEMPLATE"; pwd; exit 42',
        envs={"FOO": "bar"},
        cwd="/usr",
    )
    assert out.exit_code == 42
    assert out.stdout == b"out\nbar yes\n/usr\n"
    assert out.stderr == b"err\n"


async def test_exec_binary_output_and_timeout(agent: AgentHandle, capsule: pb.SandboxInfo) -> None:
    out = await sh(agent, capsule, "printf '\\377\\000\\001'")
    assert out.stdout == b"\xff\x00\x01"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sh(agent, capsule, "sleep 30", timeout_sec=1)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    left = await sh(agent, capsule, "ps -eo args | grep -c '^sleep 30' || true")
    assert left.stdout.strip() == b"0"


async def test_background_list_connect_kill(agent: AgentHandle, capsule: pb.SandboxInfo) -> None:
    started = await agent.stub.StartBackground(
        pb.ExecRequest(sandbox_id=capsule.sandbox_id, cmd="/bin/sh", args=["-c", "echo early; sleep 300"], tag="bg-1"),
        metadata=agent.md,
    )
    assert started.pid > 0 and started.tag == "bg-1"
    procs = (await agent.stub.ListProcesses(pb.SandboxRef(sandbox_id=capsule.sandbox_id), metadata=agent.md)).processes
    assert any(p.tag == "bg-1" and p.pid == started.pid for p in procs)
    await asyncio.sleep(0.3)
    stream = agent.stub.ConnectProcess(pb.ProcessRef(sandbox_id=capsule.sandbox_id, tag="bg-1"), metadata=agent.md)
    first = await stream.read()
    assert first.WhichOneof("event") == "start" and first.start.pid == started.pid
    replay = await stream.read()
    assert replay.stdout == b"early\n"
    await agent.stub.KillProcess(
        pb.KillProcessRequest(process=pb.ProcessRef(sandbox_id=capsule.sandbox_id, tag="bg-1"), signal="SIGKILL"),
        metadata=agent.md,
    )
    end = await stream.read()
    assert end.WhichOneof("event") == "end" and end.end.exit_code == 137
    procs = (await agent.stub.ListProcesses(pb.SandboxRef(sandbox_id=capsule.sandbox_id), metadata=agent.md)).processes
    assert not any(p.tag == "bg-1" for p in procs)


async def test_exec_stream_events_in_order(agent: AgentHandle, capsule: pb.SandboxInfo) -> None:
    call = agent.stub.ExecStream(
        pb.ExecRequest(
            sandbox_id=capsule.sandbox_id, cmd="/bin/sh", args=["-c", "echo a; sleep 0.2; echo b >&2; exit 3"]
        ),
        metadata=agent.md,
    )
    kinds = [(e.WhichOneof("event"), e) async for e in call]
    assert kinds[0][0] == "start"
    assert [(k, getattr(e, k)) for k, e in kinds[1:-1]] == [("stdout", b"a\n"), ("stderr", b"b\n")]
    assert kinds[-1][1].end.exit_code == 3


async def test_background_output_is_replayed_to_a_late_connect(agent: AgentHandle, capsule: pb.SandboxInfo) -> None:
    """A process connected to seconds after it wrote: the connect gets its early output, then what it writes
    live, then its exit."""
    sid = capsule.sandbox_id
    script = "echo early; echo early-err >&2; while [ ! -e /tmp/bg-go ]; do sleep 0.1; done; echo late; exit 5"
    started = await agent.stub.StartBackground(
        pb.ExecRequest(sandbox_id=sid, cmd="/bin/sh", args=["-c", script], tag="bg-old"), metadata=agent.md
    )
    await asyncio.sleep(3)
    stream = agent.stub.ConnectProcess(pb.ProcessRef(sandbox_id=sid, tag="bg-old"), metadata=agent.md)
    hello = await stream.read()
    assert hello.WhichOneof("event") == "start" and hello.start.pid == started.pid
    await sh(agent, capsule, "touch /tmp/bg-go")  # what it writes from now on is live
    events = await read_to_end(stream)
    kinds = [e.WhichOneof("event") for e in events]
    assert len(kinds) == 4 and kinds[2:] == ["stdout", "end"], kinds
    replay = sorted((e.WhichOneof("event"), e.stdout or e.stderr) for e in events[:2])  # two pipes: either order
    assert replay == [("stderr", b"early-err\n"), ("stdout", b"early\n")]
    assert events[2].stdout == b"late\n" and events[3].end.exit_code == 5
    procs = (await agent.stub.ListProcesses(pb.SandboxRef(sandbox_id=sid), metadata=agent.md)).processes
    assert not any(p.tag == "bg-old" for p in procs)


async def test_everyday_tools_work(agent: AgentHandle, capsule: pb.SandboxInfo) -> None:
    """coreutils, procps, git and python behave as on a normal Debian machine."""
    out = await sh(
        agent,
        capsule,
        "mkdir -p /w && echo hi > /w/f && stat -c %s /w/f && ls -la /w | wc -l "
        "&& ps -e | grep -c python3 >/dev/null && git --version >/dev/null "
        "&& python3 -c 'print(6*7)' && sudo -n true && echo done",
    )
    assert out.exit_code == 0, out.stderr
    assert out.stdout.split() == [b"3", b"4", b"42", b"done"]
