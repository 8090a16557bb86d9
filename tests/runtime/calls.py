"""Calls the conformance suites make to the host agent, as the control plane would."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import grpc

from wrenn_server.proto._generated import hostagent_pb2 as pb

if TYPE_CHECKING:
    from .conftest import AgentHandle


def new_id() -> str:
    return "cl-" + uuid.uuid4().hex[:25]


async def create(agent: AgentHandle, **kw: object) -> pb.SandboxInfo:
    fields: dict[str, object] = {"vcpus": 1, "memory_mb": 512, "disk_size_mb": 1024, **kw}
    req = pb.CreateSandboxRequest(sandbox_id=new_id(), template="minimal", **fields)  # type: ignore[arg-type]
    return await agent.stub.CreateSandbox(req, metadata=agent.md)


async def sh(agent: AgentHandle, capsule: pb.SandboxInfo, script: str, **kw: object) -> pb.ExecResponse:
    req = pb.ExecRequest(sandbox_id=capsule.sandbox_id, cmd="/bin/sh", args=["-c", script], **kw)  # type: ignore[arg-type]
    return await agent.stub.Exec(req, metadata=agent.md)


async def read_until(stream: grpc.aio.UnaryStreamCall, needle: bytes) -> bytes:
    """The terminal output of a connected process, read until `needle` shows; the stream must not end first."""
    seen = b""
    while needle not in seen:
        event = await stream.read()
        assert event is not grpc.aio.EOF and event.WhichOneof("event") != "end", f"ended before {needle!r}: {seen!r}"
        if event.WhichOneof("event") == "pty":
            seen += event.pty
    return seen


async def read_to_end(stream: grpc.aio.UnaryStreamCall) -> list[pb.ProcessEvent]:
    events = []
    while (event := await stream.read()) is not grpc.aio.EOF:
        events.append(event)
    return events


async def wait_for_error(agent: AgentHandle, sandbox_id: str) -> pb.SandboxInfo:
    for _ in range(300):
        info = await agent.stub.GetSandbox(pb.SandboxRef(sandbox_id=sandbox_id), metadata=agent.md)
        if info.status == pb.SANDBOX_STATUS_ERROR:
            return info
        await asyncio.sleep(0.1)
    raise AssertionError(f"capsule {sandbox_id} is still {info.status}")
