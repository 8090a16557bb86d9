"""Files in a capsule through the host agent, on every runtime: streamed both ways, listed, made, removed."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import grpc
import pytest

from wrenn_server.proto._generated import hostagent_pb2 as pb

from .conftest import AgentHandle

pytestmark = pytest.mark.runtime


async def test_files_round_trip_and_errors(agent: AgentHandle, capsule: pb.SandboxInfo) -> None:
    sid = capsule.sandbox_id
    data = os.urandom(3 * 1024 * 1024 + 7)

    async def upload() -> AsyncIterator[pb.WriteFileChunk]:
        yield pb.WriteFileChunk(meta=pb.PathRequest(sandbox_id=sid, path="/data/deep/blob.bin"))
        for i in range(0, len(data), 65536):
            yield pb.WriteFileChunk(data=data[i : i + 65536])
        yield pb.WriteFileChunk(end=pb.Empty())

    entry = await agent.stub.WriteFileStream(upload(), metadata=agent.md)
    assert entry.size == len(data) and entry.type == "file"
    got = b"".join(
        [
            c.data
            async for c in agent.stub.ReadFileStream(
                pb.PathRequest(sandbox_id=sid, path="/data/deep/blob.bin"), metadata=agent.md
            )
        ]
    )
    assert got == data
    listing = await agent.stub.ListDir(pb.ListDirRequest(sandbox_id=sid, path="/data", depth=2), metadata=agent.md)
    assert [e.path for e in listing.entries] == ["/data/deep", "/data/deep/blob.bin"]
    made = await agent.stub.MakeDir(pb.PathRequest(sandbox_id=sid, path="/data/new"), metadata=agent.md)
    assert made.type == "directory"
    for call, code in [
        (
            agent.stub.MakeDir(pb.PathRequest(sandbox_id=sid, path="/data/new"), metadata=agent.md),
            grpc.StatusCode.ALREADY_EXISTS,
        ),
        (
            agent.stub.ListDir(pb.ListDirRequest(sandbox_id=sid, path="/nope"), metadata=agent.md),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            agent.stub.StatPath(pb.PathRequest(sandbox_id=sid, path="/nope"), metadata=agent.md),
            grpc.StatusCode.NOT_FOUND,
        ),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == code
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in agent.stub.ReadFileStream(pb.PathRequest(sandbox_id=sid, path="/nope"), metadata=agent.md):
            pass
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    await agent.stub.RemovePath(pb.PathRequest(sandbox_id=sid, path="/data"), metadata=agent.md)
    with pytest.raises(grpc.aio.AioRpcError):
        await agent.stub.StatPath(pb.PathRequest(sandbox_id=sid, path="/data"), metadata=agent.md)
