"""Terminals in a capsule, on every runtime: size, input, detach and the replay of what was missed."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from wrenn_server.proto._generated import hostagent_pb2 as pb

from .calls import read_to_end, read_until, sh
from .conftest import AgentHandle

pytestmark = pytest.mark.runtime


async def test_pty_resize_and_input(agent: AgentHandle, capsule: pb.SandboxInfo) -> None:
    started = await agent.stub.StartBackground(
        pb.ExecRequest(
            sandbox_id=capsule.sandbox_id, cmd="/bin/sh", tag="pty-test", stdin=True, pty=pb.PtySize(cols=80, rows=24)
        ),
        metadata=agent.md,
    )
    ref = pb.ProcessRef(sandbox_id=capsule.sandbox_id, tag="pty-test")
    await agent.stub.ResizePty(pb.ResizeRequest(process=ref, cols=123, rows=45), metadata=agent.md)
    stream = agent.stub.ConnectProcess(ref, metadata=agent.md)
    await agent.stub.SendInput(pb.SendInputRequest(process=ref, data=b"stty size; exit 7\n"), metadata=agent.md)
    seen = b""
    code = None
    async for event in stream:
        if event.WhichOneof("event") == "pty":
            seen += event.pty
        elif event.WhichOneof("event") == "end":
            code = event.end.exit_code
    assert b"45 123" in seen
    assert code == 7 and started.pid > 0
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await agent.stub.ResizePty(pb.ResizeRequest(process=ref, cols=0, rows=10), metadata=agent.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_pty_detach_and_reattach_replays_what_was_missed(agent: AgentHandle, capsule: pb.SandboxInfo) -> None:
    """A terminal outlives its viewer: output made while no one is attached is replayed to the next connect
    (by pid as well as by tag), which then types and sees the echo live."""
    sid = capsule.sandbox_id
    started = await agent.stub.StartBackground(
        pb.ExecRequest(sandbox_id=sid, cmd="/bin/sh", tag="pty-detach", stdin=True, pty=pb.PtySize(cols=80, rows=24)),
        metadata=agent.md,
    )
    ref = pb.ProcessRef(sandbox_id=sid, tag="pty-detach")
    first = agent.stub.ConnectProcess(ref, metadata=agent.md)
    await agent.stub.SendInput(pb.SendInputRequest(process=ref, data=b"echo one-$((0+1))\n"), metadata=agent.md)
    await read_until(first, b"one-1")
    first.cancel()  # detached
    await agent.stub.SendInput(
        pb.SendInputRequest(process=ref, data=b"echo away-$((40+2)); touch /tmp/pty-away\n"), metadata=agent.md
    )
    for _ in range(100):
        if (await sh(agent, capsule, "test -e /tmp/pty-away")).exit_code == 0:
            break
        await asyncio.sleep(0.1)
    assert (await sh(agent, capsule, "test -e /tmp/pty-away")).exit_code == 0, "the detached shell did not answer"
    by_pid = pb.ProcessRef(sandbox_id=sid, pid=started.pid)
    again = agent.stub.ConnectProcess(by_pid, metadata=agent.md)
    hello = await again.read()
    assert hello.WhichOneof("event") == "start" and hello.start.pid == started.pid
    await agent.stub.SendInput(pb.SendInputRequest(process=by_pid, data=b"echo back-$((2+3))\n"), metadata=agent.md)
    seen = await read_until(again, b"back-5\r\n")
    # First the replay of the kept output, then the echo of what was typed now, then the shell's answer.
    marks = [b"one-1\r\n", b"away-42\r\n", b"echo back-$((2+3))", b"back-5\r\n"]
    assert all(mark in seen for mark in marks), seen
    assert [seen.index(mark) for mark in marks] == sorted(seen.index(mark) for mark in marks), seen
    await agent.stub.SendInput(pb.SendInputRequest(process=by_pid, data=b"exit 3\n"), metadata=agent.md)
    events = await read_to_end(again)
    assert events and events[-1].WhichOneof("event") == "end" and events[-1].end.exit_code == 3
    procs = (await agent.stub.ListProcesses(pb.SandboxRef(sandbox_id=sid), metadata=agent.md)).processes
    assert not any(p.pid == started.pid for p in procs)
