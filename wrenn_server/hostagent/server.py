"""The gRPC face of the host agent: translates hostagent.proto messages to manager and envd calls."""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import os
import platform
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from wrenn_server import __version__
from wrenn_server.proto import envd as wire
from wrenn_server.proto._generated import hostagent_pb2 as pb
from wrenn_server.proto._generated import hostagent_pb2_grpc as pb_grpc
from wrenn_server.proto.limits import DEFAULT_SIGNAL, MAX_TERMINAL_SIZE, SIGNALS

from .envd_client import EnvdClient, ProcessEvent
from .errors import AgentError, InvalidArgument, Unreachable
from .manager import CreateRequest, SandboxManager
from .metrics import RANGES, TIER_2H, TIER_10M, TIER_24H, Point
from .registration import token_hash
from .registry import Start
from .state import SandboxRecord, SandboxStatus
from .storage import Storage

log = logging.getLogger(__name__)

TOKEN_HEADER = "x-wrenn-agent-token"
MAX_MESSAGE = 64 * 1024 * 1024
T = TypeVar("T")


class Auth:
    """Checks the secret the control plane presents; only its hash is kept (set at registration)."""

    def __init__(self, token_hash: str = "") -> None:
        self.token_hash = token_hash

    @property
    def token(self) -> str:
        raise AttributeError("only the token's hash is kept")

    @token.setter
    def token(self, token: str) -> None:
        self.token_hash = token_hash(token)

    def check(self, context: grpc.aio.ServicerContext) -> bool:
        sent = dict(context.invocation_metadata() or ()).get(TOKEN_HEADER, "")
        return bool(self.token_hash) and hmac.compare_digest(token_hash(str(sent)), self.token_hash)


def unary(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(fn)
    async def wrapper(self: Servicer, request: Any, context: grpc.aio.ServicerContext) -> T:
        if not self.auth.check(context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong agent token")
        try:
            return await fn(self, request, context)
        except AgentError as exc:
            exc = await self.explain(request, exc)
            await context.abort(exc.status, exc.message)
            raise  # unreachable: abort raises

    return wrapper


def streaming(fn: Callable[..., AsyncIterator[T]]) -> Callable[..., AsyncIterator[T]]:
    @functools.wraps(fn)
    async def wrapper(self: Servicer, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[T]:
        if not self.auth.check(context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong agent token")
        try:
            async for item in fn(self, request, context):
                yield item
        except AgentError as exc:
            exc = await self.explain(request, exc)
            await context.abort(exc.status, exc.message)

    return wrapper


_WIRE_STATUS = {
    SandboxStatus.STARTING: pb.SANDBOX_STATUS_STARTING,
    SandboxStatus.RUNNING: pb.SANDBOX_STATUS_RUNNING,
    SandboxStatus.PAUSED: pb.SANDBOX_STATUS_PAUSED,
    SandboxStatus.ERROR: pb.SANDBOX_STATUS_ERROR,
}


def _info(
    record: SandboxRecord,
    host_ip: str,
    disk_used: int = 0,
    start: Start = Start.READOPTED,
    envd: EnvdClient | None = None,
) -> pb.SandboxInfo:
    info = pb.SandboxInfo(
        sandbox_id=record.sandbox_id,
        status=_WIRE_STATUS[record.status],
        host_ip=host_ip,
        error=record.error,
        disk_used_bytes=disk_used,
        metadata={
            "runtime": record.runtime,
            "vmm_version": "",
            "agent_version": __version__,
            "kernel_version": platform.release(),
        },
    )
    if envd is not None and envd.hello is not None:
        info.metadata["envd_version"] = envd.hello.version  # what the capsule's own envd said at its last handshake
    if start:
        info.metadata["start"] = start.value  # pool | restore | boot: how a new capsule came up
    return info


def _start_request(req: pb.ExecRequest, mode: wire.Mode) -> wire.StartRequest:
    if not req.cmd:
        raise InvalidArgument("cmd is required")
    if req.HasField("pty") and (req.pty.cols <= 0 or req.pty.rows <= 0):
        raise InvalidArgument("pty cols and rows must be positive")
    return wire.StartRequest(
        cmd=req.cmd,
        mode=mode,
        args=list(req.args),
        envs=dict(req.envs),
        cwd=req.cwd or None,
        user=req.user or None,
        tag=req.tag or None,
        stdin=req.stdin,
        pty=wire.PtySize(req.pty.cols, req.pty.rows) if req.HasField("pty") else None,
        timeout_sec=max(req.timeout_sec, 0),
    )


def _selector(ref: pb.ProcessRef) -> wire.ProcessRef:
    if ref.tag:
        return wire.ProcessRef(tag=ref.tag)
    if ref.pid > 0:
        return wire.ProcessRef(pid=ref.pid)
    raise InvalidArgument("a process is named by its pid or its tag")


def _event(event: ProcessEvent) -> pb.ProcessEvent:
    if isinstance(event, wire.StartEvent):
        return pb.ProcessEvent(start=pb.ProcessStart(pid=event.pid, tag=event.tag or ""))
    if isinstance(event, wire.OutputEvent):
        if event.kind is wire.OutputKind.STDOUT:
            return pb.ProcessEvent(stdout=event.data)
        if event.kind is wire.OutputKind.STDERR:
            return pb.ProcessEvent(stderr=event.data)
        return pb.ProcessEvent(pty=event.data)
    return pb.ProcessEvent(end=pb.ProcessEnd(exit_code=event.exit_code, end_reason=event.reason or ""))


def _entry(entry: wire.EntryInfo) -> pb.FileEntry:
    return pb.FileEntry(
        name=entry.name,
        path=entry.path,
        type=entry.type.value,
        size=entry.size,
        mode=entry.mode,
        permissions=entry.permissions,
        owner=entry.owner,
        group=entry.group,
        modified_at=entry.modified_at,
        symlink_target=entry.symlink_target or "",
    )


def _capabilities(wire: dict[str, bool | list[str]]) -> pb.Capabilities:
    message = pb.Capabilities()
    for name, value in wire.items():
        if isinstance(value, list):
            getattr(message, name).extend(value)
        else:
            setattr(message, name, value)
    return message


class Servicer(pb_grpc.HostAgentServiceServicer):
    def __init__(self, manager: SandboxManager, auth: Auth) -> None:
        self.manager = manager
        self.auth = auth

    async def explain(self, request: Any, exc: AgentError) -> AgentError:
        """A capsule's agent that stopped answering: its guest may have ended, which the error then says."""
        sandbox_id = getattr(request, "sandbox_id", "")
        if not isinstance(exc, Unreachable) or not isinstance(sandbox_id, str) or not sandbox_id:
            return exc
        return await self.manager.explain(sandbox_id, exc)

    @unary
    async def Ping(self, request: pb.PingRequest, context: Any) -> pb.PingResponse:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
        disk = shutil.disk_usage(self.manager.storage.root).total // (1024**3)
        return pb.PingResponse(
            version=__version__,
            runtime=self.manager.runtime.name,
            cpu_cores=os.cpu_count() or 1,
            memory_mb=mem,
            disk_gb=disk,
            arch=platform.machine(),
            pool=self.manager.pool.counters(),
            capabilities=_capabilities(self.manager.runtime.capabilities.to_wire()),
        )

    @unary
    async def CreateSandbox(self, request: pb.CreateSandboxRequest, context: Any) -> pb.SandboxInfo:
        sandbox = await self.manager.create(
            CreateRequest(
                sandbox_id=request.sandbox_id,
                template=request.template,
                template_id=request.template_id,
                team_id=request.team_id,
                vcpus=request.vcpus,
                memory_mb=request.memory_mb,
                disk_size_mb=request.disk_size_mb,
                timeout_sec=request.timeout_sec,
                default_user=request.default_user,
                default_env=dict(request.default_env),
            )
        )
        return _info(sandbox.record, sandbox.slot.host_ip, start=sandbox.start, envd=sandbox.envd)

    @unary
    async def DestroySandbox(self, request: pb.SandboxRef, context: Any) -> pb.Empty:
        await self.manager.destroy(request.sandbox_id)
        return pb.Empty()

    @unary
    async def GetSandbox(self, request: pb.SandboxRef, context: Any) -> pb.SandboxInfo:
        record = self.manager.record_of(request.sandbox_id)
        if record.status is SandboxStatus.ERROR:
            return _info(record, "")
        sandbox = self.manager.lookup(request.sandbox_id)
        used = await self.manager.disk_used(request.sandbox_id)
        return _info(sandbox.record, sandbox.slot.host_ip, used, envd=sandbox.envd)

    @unary
    async def ListSandboxes(self, request: pb.Empty, context: Any) -> pb.ListSandboxesResponse:
        return pb.ListSandboxesResponse(
            sandboxes=[_info(r, "") for r in self.manager.list()],
            auto_paused_sandbox_ids=sorted(self.manager.auto_paused),
        )

    @unary
    async def PauseSandbox(self, request: pb.SandboxRef, context: Any) -> pb.SandboxInfo:
        sandbox = await self.manager.pause(request.sandbox_id)
        return _info(sandbox.record, sandbox.slot.host_ip, envd=sandbox.envd)

    @unary
    async def ResumeSandbox(self, request: pb.SandboxRef, context: Any) -> pb.SandboxInfo:
        sandbox = await self.manager.resume(request.sandbox_id)
        return _info(sandbox.record, sandbox.slot.host_ip, envd=sandbox.envd)

    @unary
    async def SnapshotSandbox(self, request: pb.SnapshotRequest, context: Any) -> pb.TemplateInfo:
        if not (request.team_id and request.template_id):
            raise InvalidArgument("team_id and template_id are required")
        path = await self.manager.snapshot(request.sandbox_id, request.team_id, request.template_id)
        size = await asyncio.to_thread(Storage.tree_size, path)
        return pb.TemplateInfo(size_bytes=size, runtime=self.manager.runtime.name)

    @unary
    async def DeleteTemplate(self, request: pb.TemplateRef, context: Any) -> pb.Empty:
        await self.manager.delete_template(request.team_id, request.template_id)
        return pb.Empty()

    @unary
    async def PingSandbox(self, request: pb.SandboxRef, context: Any) -> pb.Empty:
        self.manager.active(request.sandbox_id)
        return pb.Empty()

    @unary
    async def Exec(self, request: pb.ExecRequest, context: Any) -> pb.ExecResponse:
        envd = self.manager.active(request.sandbox_id)
        out = await envd.run(_start_request(request, wire.Mode.RUN))
        return pb.ExecResponse(
            pid=out.pid,
            exit_code=out.exit_code,
            stdout=out.stdout,
            stderr=out.stderr,
            duration_ms=out.duration_ms,
            end_reason=out.reason or "",
        )

    @streaming
    async def ExecStream(self, request: pb.ExecRequest, context: Any) -> AsyncIterator[pb.ProcessEvent]:
        start = _start_request(request, wire.Mode.STREAM)
        async for event in self.manager.events(request.sandbox_id, start):
            yield _event(event)

    @unary
    async def StartBackground(self, request: pb.ExecRequest, context: Any) -> pb.BackgroundResponse:
        envd = self.manager.active(request.sandbox_id)
        out = await envd.start_background(_start_request(request, wire.Mode.BACKGROUND))
        return pb.BackgroundResponse(pid=out.pid, tag=out.tag or "")

    @unary
    async def ListProcesses(self, request: pb.SandboxRef, context: Any) -> pb.ListProcessesResponse:
        envd = self.manager.active(request.sandbox_id)
        return pb.ListProcessesResponse(
            processes=[
                pb.ProcessInfo(pid=p.pid, tag=p.tag or "", cmd=p.cmd, args=p.args) for p in await envd.processes()
            ]
        )

    @unary
    async def KillProcess(self, request: pb.KillProcessRequest, context: Any) -> pb.Empty:
        envd = self.manager.active(request.process.sandbox_id)
        signal = request.signal or DEFAULT_SIGNAL
        if signal not in SIGNALS:
            raise InvalidArgument(f"unsupported signal {signal!r}: use one of {', '.join(SIGNALS)}")
        await envd.signal(_selector(request.process), signal)
        return pb.Empty()

    @streaming
    async def ConnectProcess(self, request: pb.ProcessRef, context: Any) -> AsyncIterator[pb.ProcessEvent]:
        async for event in self.manager.events(request.sandbox_id, _selector(request)):
            yield _event(event)

    @unary
    async def SendInput(self, request: pb.SendInputRequest, context: Any) -> pb.Empty:
        envd = self.manager.active(request.process.sandbox_id)
        await envd.send_input(_selector(request.process), request.data)
        return pb.Empty()

    @unary
    async def ResizePty(self, request: pb.ResizeRequest, context: Any) -> pb.Empty:
        envd = self.manager.active(request.process.sandbox_id)
        if not (0 < request.cols <= MAX_TERMINAL_SIZE and 0 < request.rows <= MAX_TERMINAL_SIZE):
            raise InvalidArgument(f"cols and rows must be between 1 and {MAX_TERMINAL_SIZE}")
        await envd.resize(_selector(request.process), request.cols, request.rows)
        return pb.Empty()

    @streaming
    async def ReadFileStream(self, request: pb.PathRequest, context: Any) -> AsyncIterator[pb.FileChunk]:
        envd = self.manager.get(request.sandbox_id).envd
        async for chunk in envd.read_file(request.path):
            yield pb.FileChunk(data=chunk)

    async def WriteFileStream(
        self, request_iterator: AsyncIterator[pb.WriteFileChunk], context: grpc.aio.ServicerContext
    ) -> pb.FileEntry:
        if not self.auth.check(context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong agent token")
        try:
            first = await anext(aiter(request_iterator))
            if not first.HasField("meta"):
                raise InvalidArgument("the first message of a file upload names the file")

            async def chunks() -> AsyncIterator[bytes]:
                async for part in request_iterator:
                    if part.HasField("end"):
                        return
                    yield part.data
                # A stream that stops without its end marker was cancelled: failing here aborts the
                # upload to envd, which then drops its temporary file instead of renaming it.
                raise InvalidArgument("the upload ended early; nothing was written")

            envd = self.manager.get(first.meta.sandbox_id).envd
            return _entry(await envd.write_file(first.meta.path, chunks()))
        except StopAsyncIteration:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty upload")
        except AgentError as exc:
            await context.abort(exc.status, exc.message)
        raise AssertionError("unreachable")

    @unary
    async def ListDir(self, request: pb.ListDirRequest, context: Any) -> pb.ListDirResponse:
        envd = self.manager.get(request.sandbox_id).envd
        entries = await envd.list_dir(request.path, request.depth or 1)
        return pb.ListDirResponse(entries=[_entry(e) for e in entries])

    @unary
    async def MakeDir(self, request: pb.PathRequest, context: Any) -> pb.FileEntry:
        envd = self.manager.get(request.sandbox_id).envd
        return _entry(await envd.make_dir(request.path))

    @unary
    async def RemovePath(self, request: pb.PathRequest, context: Any) -> pb.Empty:
        envd = self.manager.get(request.sandbox_id).envd
        await envd.remove(request.path)
        return pb.Empty()

    @unary
    async def GetSandboxMetrics(self, request: pb.MetricsRequest, context: Any) -> pb.MetricsResponse:
        self.manager.lookup(request.sandbox_id)
        if request.range not in RANGES:
            raise InvalidArgument(f"range must be one of {', '.join(RANGES)}")
        rings = self.manager.sampler.rings.get(request.sandbox_id)
        points = rings.read(request.range, time.time()) if rings else []
        return pb.MetricsResponse(points=_points(points))

    @unary
    async def FlushSandboxMetrics(self, request: pb.SandboxRef, context: Any) -> pb.FlushMetricsResponse:
        self.manager.lookup(request.sandbox_id)
        rings = self.manager.sampler.rings.get(request.sandbox_id)
        tiers = rings.drain() if rings else {}
        return pb.FlushMetricsResponse(
            points_10m=_points(tiers.get(TIER_10M, [])),
            points_2h=_points(tiers.get(TIER_2H, [])),
            points_24h=_points(tiers.get(TIER_24H, [])),
        )

    @unary
    async def StatPath(self, request: pb.PathRequest, context: Any) -> pb.FileEntry:
        envd = self.manager.get(request.sandbox_id).envd
        return _entry(await envd.stat(request.path))


def _points(points: list[Point]) -> list[pb.MetricPoint]:
    return [
        pb.MetricPoint(timestamp_unix=int(p.ts), cpu_pct=p.cpu_pct, mem_bytes=p.mem_bytes, disk_bytes=p.disk_bytes)
        for p in points
    ]


def make_server(servicer: Servicer, listen: str) -> grpc.aio.Server:
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.so_reuseport", 0),
        ]
    )
    pb_grpc.add_HostAgentServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(listen)
    return server
