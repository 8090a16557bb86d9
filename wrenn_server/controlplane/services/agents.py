"""RPC client to host agents: one insecure gRPC channel per agent address, the host's token on every call.

Every failure leaves this module as a `WrennError` (see `errors.from_rpc_error`).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import grpc

from wrenn_server.proto._generated import hostagent_pb2 as pb
from wrenn_server.proto._generated import hostagent_pb2_grpc as pb_grpc

from ..db.models import Host
from ..errors import from_rpc_error
from ..ids import agent_rpc_token
from .status import Status

TOKEN_HEADER = "x-wrenn-agent-token"
CALL_TIMEOUT = 30.0
INPUT_TIMEOUT = 5.0
CREATE_TIMEOUT = 600.0
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # An agent that restarts must be reachable again at once, not after gRPC's default backoff (up to 2 min).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


# What an agent's `SandboxInfo.status` says, in the control plane's words.
_AGENT_STATUS = {
    pb.SANDBOX_STATUS_STARTING: Status.STARTING,
    pb.SANDBOX_STATUS_RUNNING: Status.RUNNING,
    pb.SANDBOX_STATUS_PAUSED: Status.PAUSED,
    pb.SANDBOX_STATUS_ERROR: Status.ERROR,
}


def agent_status(info: pb.SandboxInfo) -> Status | None:
    """The capsule's status as its agent reports it; None when the agent does not say."""
    return _AGENT_STATUS.get(info.status)


@dataclass(frozen=True)
class HostRef:
    """What a call needs to know about a host, detached from any DB session."""

    id: uuid.UUID
    address: str
    rpc_token: str  # as stored: a seed the token is derived from (see AgentPool.client)

    @classmethod
    def of(cls, host: Host) -> HostRef:
        return cls(id=host.id, address=host.address, rpc_token=host.rpc_token)


class AgentClient:
    """Typed calls to one agent; `sandbox_id`s are `cl-…` wire IDs."""

    def __init__(self, stub: Any, token: str) -> None:
        self._stub = stub
        self._metadata = ((TOKEN_HEADER, token),)

    async def _unary(self, method: str, request: Any, timeout: float | None) -> Any:
        try:
            return await getattr(self._stub, method)(request, metadata=self._metadata, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc

    async def ping(self) -> pb.PingResponse:
        return cast(pb.PingResponse, await self._unary("Ping", pb.PingRequest(), 10.0))

    async def create_sandbox(self, request: pb.CreateSandboxRequest) -> pb.SandboxInfo:
        return cast(pb.SandboxInfo, await self._unary("CreateSandbox", request, CREATE_TIMEOUT))

    async def destroy_sandbox(self, sandbox_id: str) -> None:
        await self._unary("DestroySandbox", pb.SandboxRef(sandbox_id=sandbox_id), 120.0)

    async def list_sandboxes(self) -> pb.ListSandboxesResponse:
        return cast(pb.ListSandboxesResponse, await self._unary("ListSandboxes", pb.Empty(), 15.0))

    async def get_sandbox(self, sandbox_id: str) -> pb.SandboxInfo:
        return cast(pb.SandboxInfo, await self._unary("GetSandbox", pb.SandboxRef(sandbox_id=sandbox_id), CALL_TIMEOUT))

    async def snapshot_sandbox(self, request: pb.SnapshotRequest) -> pb.TemplateInfo:
        return cast(pb.TemplateInfo, await self._unary("SnapshotSandbox", request, 600.0))

    async def delete_template(self, team_id: str, template_id: str) -> None:
        await self._unary("DeleteTemplate", pb.TemplateRef(team_id=team_id, template_id=template_id), CALL_TIMEOUT)

    async def pause_sandbox(self, sandbox_id: str) -> pb.SandboxInfo:
        return cast(pb.SandboxInfo, await self._unary("PauseSandbox", pb.SandboxRef(sandbox_id=sandbox_id), 300.0))

    async def resume_sandbox(self, sandbox_id: str) -> pb.SandboxInfo:
        return cast(pb.SandboxInfo, await self._unary("ResumeSandbox", pb.SandboxRef(sandbox_id=sandbox_id), 300.0))

    async def ping_sandbox(self, sandbox_id: str) -> None:
        await self._unary("PingSandbox", pb.SandboxRef(sandbox_id=sandbox_id), CALL_TIMEOUT)

    async def exec(self, request: pb.ExecRequest) -> pb.ExecResponse:
        limit = request.timeout_sec + 15.0 if request.timeout_sec > 0 else None
        return cast(pb.ExecResponse, await self._unary("Exec", request, limit))

    async def start_background(self, request: pb.ExecRequest) -> pb.BackgroundResponse:
        return cast(pb.BackgroundResponse, await self._unary("StartBackground", request, CALL_TIMEOUT))

    async def list_processes(self, sandbox_id: str) -> pb.ListProcessesResponse:
        request = pb.SandboxRef(sandbox_id=sandbox_id)
        return cast(pb.ListProcessesResponse, await self._unary("ListProcesses", request, CALL_TIMEOUT))

    async def kill_process(self, request: pb.KillProcessRequest) -> None:
        await self._unary("KillProcess", request, CALL_TIMEOUT)

    async def sandbox_metrics(self, sandbox_id: str, range_name: str) -> pb.MetricsResponse:
        request = pb.MetricsRequest(sandbox_id=sandbox_id, range=range_name)
        return cast(pb.MetricsResponse, await self._unary("GetSandboxMetrics", request, CALL_TIMEOUT))

    async def flush_sandbox_metrics(self, sandbox_id: str) -> pb.FlushMetricsResponse:
        request = pb.SandboxRef(sandbox_id=sandbox_id)
        return cast(pb.FlushMetricsResponse, await self._unary("FlushSandboxMetrics", request, CALL_TIMEOUT))

    async def _stream(self, method: str, request: Any) -> AsyncGenerator[Any, None]:
        """A server-streaming call without deadline; errors surface on the first `__anext__`."""
        call = getattr(self._stub, method)(request, metadata=self._metadata)
        try:
            async for message in call:
                yield message
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            call.cancel()

    def exec_stream(self, request: pb.ExecRequest) -> AsyncGenerator[pb.ProcessEvent, None]:
        """Start a process and follow it: `start`, its output, then `end`."""
        return self._stream("ExecStream", request)

    def connect_process(self, process: pb.ProcessRef) -> AsyncGenerator[pb.ProcessEvent, None]:
        """Follow a running process: `start`, the replay of its kept output, live output, then `end`."""
        return self._stream("ConnectProcess", process)

    async def send_input(self, request: pb.SendInputRequest) -> None:
        await self._unary("SendInput", request, INPUT_TIMEOUT)

    async def resize_pty(self, request: pb.ResizeRequest) -> None:
        await self._unary("ResizePty", request, CALL_TIMEOUT)

    async def list_dir(self, request: pb.ListDirRequest) -> pb.ListDirResponse:
        return cast(pb.ListDirResponse, await self._unary("ListDir", request, CALL_TIMEOUT))

    async def make_dir(self, sandbox_id: str, path: str) -> pb.FileEntry:
        request = pb.PathRequest(sandbox_id=sandbox_id, path=path)
        return cast(pb.FileEntry, await self._unary("MakeDir", request, CALL_TIMEOUT))

    async def remove_path(self, sandbox_id: str, path: str) -> None:
        await self._unary("RemovePath", pb.PathRequest(sandbox_id=sandbox_id, path=path), CALL_TIMEOUT)

    async def stat_path(self, sandbox_id: str, path: str) -> pb.FileEntry:
        request = pb.PathRequest(sandbox_id=sandbox_id, path=path)
        return cast(pb.FileEntry, await self._unary("StatPath", request, CALL_TIMEOUT))

    async def read_file_stream(self, sandbox_id: str, path: str) -> AsyncGenerator[bytes, None]:
        """The file's bytes chunk by chunk; errors surface on the first `__anext__`."""
        call = self._stub.ReadFileStream(pb.PathRequest(sandbox_id=sandbox_id, path=path), metadata=self._metadata)
        try:
            async for chunk in call:
                yield cast(pb.FileChunk, chunk).data
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            call.cancel()

    def open_write_stream(self, sandbox_id: str, path: str, chunks: AsyncIterable[bytes]) -> UploadCall:
        """Start WriteFileStream: a `meta` message, one `data` message per item of `chunks`, then `end`."""
        meta = pb.PathRequest(sandbox_id=sandbox_id, path=path)
        return UploadCall(self._stub, self._metadata, meta, chunks)


class UploadCall:
    """A running client-streaming upload.

    The agent keeps the file only when the stream closes with an `end` message. `end` follows the last
    chunk once `chunks` is exhausted, unless the upload was abandoned: then the stream closes without it,
    and the agent discards what it received and answers INVALID_ARGUMENT. Abandoning lets the agent clean
    up in order; `cancel()` tears the call down at once and is for a call the agent does not end.
    """

    def __init__(self, stub: Any, metadata: Any, meta: pb.PathRequest, chunks: AsyncIterable[bytes]) -> None:
        self._abandoned = False
        self._call = stub.WriteFileStream(self._messages(meta, chunks), metadata=metadata)

    async def _messages(self, meta: pb.PathRequest, chunks: AsyncIterable[bytes]) -> AsyncIterator[pb.WriteFileChunk]:
        yield pb.WriteFileChunk(meta=meta)
        async for chunk in chunks:
            if self._abandoned:
                return
            yield pb.WriteFileChunk(data=chunk)
        if not self._abandoned:
            yield pb.WriteFileChunk(end=pb.Empty())

    def abandon(self) -> None:
        """Close the stream without `end` as soon as `chunks` yields or stops: no file is written."""
        self._abandoned = True

    def cancel(self) -> None:
        self._call.cancel()

    async def result(self) -> pb.FileEntry:
        try:
            return cast(pb.FileEntry, await self._call)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc


class AgentPool:
    """One channel per agent address, created on first use inside the running event loop."""

    def __init__(self, secret: str = "") -> None:
        self._secret = secret  # derives each agent's token from the seed the database keeps (ids.agent_rpc_token)
        self._channels: dict[str, Any] = {}
        self._stubs: dict[str, Any] = {}
        self._local: dict[str, Any] = {}

    def attach_local(self, address: str, stub: Any) -> None:
        """Calls to the agent at `address` go to `stub`, an agent in this process (see hostagent.local)."""
        self._local[address] = stub

    def client(self, host: HostRef) -> AgentClient:
        token = agent_rpc_token(self._secret, host.id, host.rpc_token)
        stub = self._local.get(host.address) or self._stubs.get(host.address)
        if stub is not None:
            return AgentClient(stub, token)
        channel = self._channels.get(host.address)
        if channel is None:
            channel = grpc.aio.insecure_channel(host.address, options=_CHANNEL_OPTIONS)
            self._channels[host.address] = channel
        stub = self._stubs[host.address] = pb_grpc.HostAgentServiceStub(channel)  # type: ignore[no-untyped-call]
        return AgentClient(stub, token)

    async def close(self) -> None:
        self._local, self._stubs = {}, {}
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()
