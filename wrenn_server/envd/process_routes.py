"""Routes under /process: start (background, stream or run), connect, list, input, signals and resize."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import suppress
from typing import TypeVar

from ..proto.envd import (
    EndEvent,
    EndReason,
    InputRequest,
    KeepAlive,
    Mode,
    OutputEvent,
    OutputKind,
    ProcessEntry,
    ProcessList,
    ProcessRef,
    PtySize,
    ResizeRequest,
    RunResult,
    SignalRequest,
    Started,
    StartEvent,
    StartRequest,
    event_line,
)
from .errors import InvalidRequest, Timeout
from .http import Handler, Request, Response, StreamAborted
from .params import answer, read_message
from .processes import Process, ProcessInfo, ProcessTable
from .spawn import Launch, resolve_executable
from .users import Defaults, User

NDJSON = "application/x-ndjson"
POLL = 1.0  # how often an idle stream checks that its client is still there
KEEPALIVE_EVERY = 15.0
QUEUE_BYTES = 8 * 1024 * 1024  # a stream further behind than this is dropped, never the process


KILL_WAIT = 2.0
R = TypeVar("R", bound=ProcessRef)

KEEPALIVE = event_line(KeepAlive())


class EventQueue:
    """A listener that queues NDJSON lines for one client stream."""

    def __init__(self, drop_client: Callable[[], None]) -> None:
        self._drop_client = drop_client
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.queued = 0
        self.overflowed = False

    def _put(self, line: bytes | None) -> None:
        if self.overflowed:
            return
        if line is not None:
            self.queued += len(line)
            if self.queued > QUEUE_BYTES:
                self.overflowed, line = True, None
                self._drop_client()
        self.queue.put_nowait(line)

    def on_output(self, kind: OutputKind, data: bytes) -> None:
        self._put(event_line(OutputEvent(kind, data)))

    def on_end(self, exit_code: int, signal: int | None, reason: EndReason | None) -> None:
        self._put(event_line(EndEvent(exit_code, signal, reason)))
        self._put(None)


async def _events(proc: Process, events: EventQueue) -> AsyncGenerator[bytes, None]:
    try:
        yield event_line(StartEvent(proc.pid, proc.info.tag))
        idle = 0.0
        while True:
            try:
                item = await asyncio.wait_for(events.queue.get(), POLL)
            except TimeoutError:
                idle += POLL
                if idle >= KEEPALIVE_EVERY:
                    idle = 0.0
                    yield KEEPALIVE
                else:
                    yield b""  # lets the server check that the client is still there
                continue
            idle = 0.0
            parts = []
            while item is not None:  # send whatever is already queued as one chunk
                parts.append(item)
                events.queued -= len(item)
                if events.queue.empty():
                    break
                item = events.queue.get_nowait()
            if parts:
                yield b"".join(parts)
            if item is None:
                if events.overflowed:
                    raise StreamAborted(f"client of process {proc.pid} fell too far behind")
                return
    finally:
        proc.unsubscribe(events)


def _stream(proc: Process, request: Request) -> Response:
    events = EventQueue(request.abort)
    proc.subscribe(events)
    return Response(200, content_type=NDJSON, stream=_events(proc, events))


class Collector:
    """A listener that keeps all of a `run` process's output."""

    def __init__(self) -> None:
        self.out: dict[OutputKind, bytearray] = {kind: bytearray() for kind in OutputKind}

    def on_output(self, kind: OutputKind, data: bytes) -> None:
        self.out[kind] += data

    def on_end(self, exit_code: int, signal: int | None, reason: EndReason | None) -> None:
        pass


def _signal(value: str | int) -> int:
    if isinstance(value, str):
        name = value.upper() if value.upper().startswith("SIG") else f"SIG{value.upper()}"
        if name in signal.Signals.__members__:
            return int(signal.Signals[name])
    elif 0 < value < signal.NSIG:
        return value
    raise InvalidRequest("'signal' must be a signal name such as SIGTERM, or a signal number")


def routes(defaults: Defaults, table: ProcessTable) -> dict[tuple[str, str], Handler]:
    def launch(body: StartRequest) -> tuple[Launch, ProcessInfo]:
        user = User.lookup(body.user or defaults.user)
        env = user.base_env() | defaults.env | body.envs
        if body.pty:
            env.setdefault("TERM", "xterm-256color")
        if body.cwd:
            cwd = defaults.resolve_path(body.cwd)
        else:
            cwd = defaults.workdir or (user.home if os.path.isdir(user.home) else "/")
        exe = resolve_executable(body.cmd, env.get("PATH", ""))
        launch = Launch([body.cmd, *body.args], exe, env, cwd, user, body.stdin, body.pty)
        return launch, ProcessInfo(body.tag, body.cmd, body.args, body.envs, cwd, body.pty is not None)

    async def start(request: Request) -> Response:
        body = await read_message(request, StartRequest)
        mode, timeout = body.mode, body.timeout_sec
        began = time.monotonic()
        proc = table.start(*launch(body))
        if mode is Mode.BACKGROUND:
            return answer(Started(proc.pid, proc.info.tag))
        if mode is Mode.STREAM:
            return _stream(proc, request)
        collected = Collector()
        proc.subscribe(collected)
        try:
            await asyncio.wait_for(proc.finished.wait(), timeout if timeout > 0 else None)
        except TimeoutError:
            proc.send_signal(signal.SIGKILL)
            await proc.finished.wait()
            raise Timeout(f"command timed out after {timeout:g} s") from None
        out = collected.out
        stdout, stderr = out[OutputKind.STDOUT] or out[OutputKind.PTY], out[OutputKind.STDERR]
        millis = int((time.monotonic() - began) * 1000)
        result = RunResult(proc.pid, proc.exit_code or 0, bytes(stdout), bytes(stderr), millis, proc.reason)
        return Response(200, result.encode())

    async def find(request: Request, kind: type[R]) -> tuple[Process, R]:
        body = await read_message(request, kind)
        return table.find(body.pid, body.tag), body

    async def connect(request: Request) -> Response:
        proc, _ = await find(request, ProcessRef)
        return _stream(proc, request)

    async def list_(request: Request) -> Response:
        procs = [ProcessEntry(p.pid, **vars(p.info), running=True) for p in table.running()]
        return answer(ProcessList(procs))

    async def input_(request: Request) -> Response:
        proc, body = await find(request, InputRequest)
        await proc.write(body.data)
        return Response(204)

    async def close_stdin(request: Request) -> Response:
        proc, _ = await find(request, ProcessRef)
        await proc.close_stdin()
        return Response(204)

    async def signal_(request: Request) -> Response:
        proc, body = await find(request, SignalRequest)
        sig = _signal(body.signal)
        proc.send_signal(sig)
        if sig == signal.SIGKILL:
            # Answer once it is gone, so a list right after a kill no longer shows it.
            with suppress(TimeoutError):
                await asyncio.wait_for(proc.finished.wait(), KILL_WAIT)
        return Response(204)

    async def resize(request: Request) -> Response:
        proc, body = await find(request, ResizeRequest)
        if body.cols <= 0 or body.rows <= 0:
            raise InvalidRequest("'cols' and 'rows' must be positive integers")
        proc.resize(PtySize(body.cols, body.rows))
        return Response(204)

    return {
        ("POST", "/process/start"): start,
        ("POST", "/process/connect"): connect,
        ("GET", "/process/list"): list_,
        ("POST", "/process/input"): input_,
        ("POST", "/process/close-stdin"): close_stdin,
        ("POST", "/process/signal"): signal_,
        ("POST", "/process/resize"): resize,
    }
