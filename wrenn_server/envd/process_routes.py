"""Routes under /process: start (background, stream or run), connect, list, input, signals and resize."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import signal
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import suppress
from enum import StrEnum
from typing import Any

from .errors import InvalidRequest, Timeout
from .http import Handler, Request, Response, StreamAborted, json_response
from .params import JsonObject, opt_bool, opt_int, opt_number, opt_str, read_json, req_str, str_list, str_map
from .processes import Process, ProcessInfo, ProcessTable
from .spawn import Launch, OutputKind, PtySize, resolve_executable
from .users import Defaults, User

NDJSON = "application/x-ndjson"
POLL = 1.0  # how often an idle stream checks that its client is still there
KEEPALIVE_EVERY = 15.0
QUEUE_BYTES = 8 * 1024 * 1024  # a stream further behind than this is dropped, never the process


class Mode(StrEnum):
    BACKGROUND = "background"
    STREAM = "stream"
    RUN = "run"


KILL_WAIT = 2.0


def _line(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


KEEPALIVE = _line({"type": "keepalive"})


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
        # Base64 needs no JSON escaping, and json.dumps would spend most of a busy stream's CPU scanning it.
        self._put(b'{"type":"%s","data":"%s"}\n' % (kind.value.encode(), base64.b64encode(data)))

    def on_end(self, exit_code: int, signal: int | None) -> None:
        self._put(_line({"type": "end", "exit_code": exit_code, "signal": signal}))
        self._put(None)


async def _events(proc: Process, events: EventQueue) -> AsyncGenerator[bytes, None]:
    try:
        yield _line({"type": "start", "pid": proc.pid, "tag": proc.info.tag})
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

    def on_end(self, exit_code: int, signal: int | None) -> None:
        pass


def _size(value: object) -> PtySize:
    if not isinstance(value, dict):
        raise InvalidRequest("'pty' must be an object with 'cols' and 'rows'")
    cols, rows = opt_int(value, "cols"), opt_int(value, "rows")
    if not cols or not rows or cols < 0 or rows < 0:
        raise InvalidRequest("'cols' and 'rows' must be positive integers")
    return PtySize(cols, rows)


def _signal(value: object) -> int:
    if isinstance(value, str):
        name = value.upper() if value.upper().startswith("SIG") else f"SIG{value.upper()}"
        if name in signal.Signals.__members__:
            return int(signal.Signals[name])
    elif isinstance(value, int) and not isinstance(value, bool) and 0 < value < signal.NSIG:
        return value
    raise InvalidRequest("'signal' must be a signal name such as SIGTERM, or a signal number")


def routes(defaults: Defaults, table: ProcessTable) -> dict[tuple[str, str], Handler]:
    def launch(body: JsonObject) -> tuple[Launch, ProcessInfo]:
        cmd, args, envs = req_str(body, "cmd"), str_list(body, "args"), str_map(body, "envs")
        user = User.lookup(opt_str(body, "user") or defaults.user)
        pty = _size(body["pty"]) if body.get("pty") is not None else None
        env = user.base_env() | defaults.env | envs
        if pty:
            env.setdefault("TERM", "xterm-256color")
        cwd = opt_str(body, "cwd")
        if cwd:
            cwd = defaults.resolve_path(cwd)
        else:
            cwd = defaults.workdir or (user.home if os.path.isdir(user.home) else "/")
        exe = resolve_executable(cmd, env.get("PATH", ""))
        launch = Launch([cmd, *args], exe, env, cwd, user, opt_bool(body, "stdin"), pty)
        return launch, ProcessInfo(opt_str(body, "tag"), cmd, args, envs, cwd, pty is not None)

    async def start(request: Request) -> Response:
        body = await read_json(request)
        try:
            mode = Mode(opt_str(body, "mode") or "")
        except ValueError:
            raise InvalidRequest("'mode' must be one of: background, stream, run") from None
        timeout = opt_number(body, "timeout_sec") or 0.0
        began = time.monotonic()
        proc = table.start(*launch(body))
        if mode is Mode.BACKGROUND:
            return json_response({"pid": proc.pid, "tag": proc.info.tag})
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
        return Response(
            200,
            b'{"pid":%d,"exit_code":%d,"stdout":"%s","stderr":"%s","duration_ms":%d}'
            % (proc.pid, proc.exit_code or 0, base64.b64encode(stdout), base64.b64encode(stderr), millis),
        )

    async def find(request: Request) -> tuple[Process, JsonObject]:
        body = await read_json(request)
        return table.find(opt_int(body, "pid"), opt_str(body, "tag")), body

    async def connect(request: Request) -> Response:
        proc, _ = await find(request)
        return _stream(proc, request)

    async def list_(request: Request) -> Response:
        procs = [{"pid": p.pid, **vars(p.info), "running": True} for p in table.running()]
        return json_response({"processes": procs})

    async def input_(request: Request) -> Response:
        proc, body = await find(request)
        try:
            data = base64.b64decode(opt_str(body, "data") or "", validate=True)
        except binascii.Error:
            raise InvalidRequest("'data' must be base64") from None
        await proc.write(data)
        return Response(204)

    async def close_stdin(request: Request) -> Response:
        proc, _ = await find(request)
        await proc.close_stdin()
        return Response(204)

    async def signal_(request: Request) -> Response:
        proc, body = await find(request)
        sig = _signal(body.get("signal"))
        proc.send_signal(sig)
        if sig == signal.SIGKILL:
            # Answer once it is gone, so a list right after a kill no longer shows it.
            with suppress(TimeoutError):
                await asyncio.wait_for(proc.finished.wait(), KILL_WAIT)
        return Response(204)

    async def resize(request: Request) -> Response:
        proc, body = await find(request)
        proc.resize(_size(body))
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
