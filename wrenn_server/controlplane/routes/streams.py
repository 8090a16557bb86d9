"""WebSockets that follow a process: `/exec/stream` starts one, `/processes/{selector}/stream` attaches.

Frames are JSON text. Client: `{"type":"start","cmd","args"?}` (exec stream only), `{"type":"stop"}`.
Server: `start` {pid}, `stdout` / `stderr` {data}, `exit` {exit_code}, `error` {data}; then the server closes.
Stopping an exec stream, or leaving it before the process ends, kills the process; leaving or stopping a
process stream only stops following (the process runs on, and a later stream replays its kept output).

Also here, shared with the PTY socket: authentication on the upgrade and the `Socket` wrapper.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import aclosing
from typing import Any, TypeVar, cast

from fastapi import APIRouter, WebSocket
from pydantic import BaseModel, ValidationError
from starlette.websockets import WebSocketDisconnect, WebSocketDisconnected

from ..errors import AgentError, WrennError, error_response
from ..ids import Kind, parse_id
from ..schemas.streams import ExecStart
from ..services.auth import Principal
from ..services.streams import Event, Exited, Output, Started, StreamService, Target, TextDecoder, process_selector
from ..state import ControlPlane
from .deps import caller

router = APIRouter(prefix="/v1/capsules", tags=["streams"])
log = logging.getLogger(__name__)

MAX_FRAME_BYTES = 4 * 1024 * 1024
FIRST_FRAME_SEC = 30.0
# Clients cap the messages they take (the SDK's at 64 KiB); JSON may spend 6 bytes on one character.
MAX_SEND_CHARS = 8 * 1024
CLOSE_NORMAL, CLOSE_POLICY, CLOSE_TOO_BIG = 1000, 1008, 1009
M = TypeVar("M", bound=BaseModel)


class Disconnected(Exception):
    """The client went away."""


class TooLarge(Exception):
    """A frame above the read limit."""


class BadFrame(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Socket:
    """An accepted WebSocket: serialized sends, checked receives, and a close that never raises."""

    def __init__(self, ws: WebSocket, cp: ControlPlane, principal: Principal) -> None:
        self.ws = ws
        self.principal = principal
        self.streams = StreamService(cp.capsules, cp.pool)
        self._lock = asyncio.Lock()
        self._closed = False

    async def _send(self, message: dict[str, Any]) -> None:
        async with self._lock:
            if self._closed:
                raise Disconnected
            try:
                await self.ws.send(message)
            except (WebSocketDisconnect, WebSocketDisconnected, OSError) as exc:
                self._closed = True
                raise Disconnected from exc

    async def send(self, frame: dict[str, Any]) -> None:
        await self._send({"type": "websocket.send", "text": json.dumps(frame, ensure_ascii=False)})

    async def send_bytes(self, data: bytes) -> None:
        await self._send({"type": "websocket.send", "bytes": data})

    async def receive(self, timeout: float | None = None) -> str | bytes:
        """The next data frame; raises `Disconnected` once the client left, `TooLarge` over the limit."""
        try:
            message = await asyncio.wait_for(self.ws.receive(), timeout)
        except TimeoutError:
            raise BadFrame(f"no frame within {timeout:g} s") from None
        except (WebSocketDisconnect, WebSocketDisconnected) as exc:
            raise Disconnected from exc
        if message["type"] == "websocket.disconnect":
            self._closed = True
            raise Disconnected
        data: str | bytes = message["bytes"] if message.get("bytes") is not None else message.get("text") or ""
        size = len(data) if isinstance(data, bytes) else len(data.encode())
        if size > MAX_FRAME_BYTES:
            raise TooLarge
        return data

    async def close(self, code: int = CLOSE_NORMAL) -> None:
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(WebSocketDisconnect, WebSocketDisconnected, OSError):
                await self.ws.close(code)


def control(data: str | bytes) -> dict[str, Any]:
    """A JSON control frame with a string `type`."""
    if isinstance(data, bytes):
        raise BadFrame("expected a JSON text frame, got a binary frame")
    try:
        frame = json.loads(data)
    except ValueError:
        raise BadFrame("malformed frame: not JSON") from None
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
        raise BadFrame("malformed frame: a JSON object with a string 'type' is required")
    return cast(dict[str, Any], frame)


def parse(model: type[M], frame: dict[str, Any]) -> M:
    try:
        return model.model_validate(frame)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first.get("loc", ()))
        raise BadFrame(f"invalid '{frame.get('type')}' frame: field '{field}': {first.get('msg')}") from None


async def accept(ws: WebSocket) -> Socket | None:
    """Authenticate the upgrade (X-API-Key, else Bearer); refused callers get the 401 before any accept."""
    cp = cast(ControlPlane, ws.app.state.control_plane)
    try:
        principal = await caller(cp, ws.headers.get("x-api-key"), ws.headers.get("authorization"))
    except WrennError as exc:
        if "websocket.http.response" in (ws.scope.get("extensions") or {}):
            await ws.send_denial_response(error_response(exc.code, exc.message, exc.status))
        else:
            await ws.close(CLOSE_POLICY, exc.message)
        return None
    await ws.accept()
    return Socket(ws, cp, principal)


async def open_target(socket: Socket, capsule: str) -> Target:
    return await socket.streams.target(socket.principal, parse_id(Kind.SANDBOX, capsule))


async def serve(socket: Socket, session: Awaitable[None], *, fatal: bool = False) -> None:
    """Run a session to its end: a failure becomes one `error` frame, and the socket is always closed."""
    code = CLOSE_NORMAL
    try:
        await session
    except Disconnected:
        pass
    except TooLarge:
        code = CLOSE_TOO_BIG
    except (BadFrame, WrennError) as exc:
        await report(socket, exc.message, fatal)
    except Exception:
        log.exception("stream failed")
        await report(socket, "internal server error", fatal)
    finally:
        await socket.close(code)


async def report(socket: Socket, message: str, fatal: bool = False) -> None:
    frame: dict[str, Any] = {"type": "error", "data": message}
    if fatal:
        frame["fatal"] = True
    with contextlib.suppress(Disconnected):
        await socket.send(frame)


async def first_of(*jobs: Coroutine[Any, Any, None]) -> int:
    """Run `jobs` together until one ends; the rest are cancelled. Answers its index, or raises its error."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    index = min(tasks.index(task) for task in done)
    tasks[index].result()
    return index


async def first_start(events: AsyncIterator[Event]) -> Started:
    event = await anext(events, None)
    if not isinstance(event, Started):
        raise AgentError("the host agent did not report the process start")
    return event


async def relay(socket: Socket, events: AsyncIterator[Event]) -> None:
    """Output as `stdout` / `stderr` text frames (a terminal's counts as stdout), then `exit`."""
    text = TextDecoder()
    async for event in events:
        if isinstance(event, Output):
            kind = "stderr" if event.kind == "stderr" else "stdout"
            await _send_text(socket, kind, text.decode(kind, event.data))
        elif isinstance(event, Exited):
            for kind, rest in text.flush():
                await _send_text(socket, kind, rest)
            await socket.send({"type": "exit", "exit_code": event.exit_code})
            return
    raise AgentError("the process stream ended before the process did")


async def _send_text(socket: Socket, kind: str, text: str) -> None:
    for start in range(0, len(text), MAX_SEND_CHARS):
        await socket.send({"type": kind, "data": text[start : start + MAX_SEND_CHARS]})


async def until_stop(socket: Socket, on_stop: Callable[[], Awaitable[None]] | None = None) -> None:
    """Read client frames: `stop` runs `on_stop` (and reading goes on), or ends the session if there is none."""
    while True:
        frame = control(await socket.receive())
        if frame["type"] == "stop":
            if on_stop is None:
                return
            await on_stop()


@router.websocket("/{id}/exec/stream")
async def exec_stream(websocket: WebSocket, id: str) -> None:
    socket = await accept(websocket)
    if socket is not None:
        await serve(socket, _exec(socket, id))


async def _exec(socket: Socket, capsule: str) -> None:
    target = await open_target(socket, capsule)
    try:
        start = parse(ExecStart, control(await socket.receive(FIRST_FRAME_SEC)))
        async with aclosing(target.exec(start.cmd, start.args or [])) as events:
            pid = (await first_start(events)).pid
            finished = -1
            try:
                await socket.send({"type": "start", "pid": pid})
                finished = await first_of(relay(socket, events), until_stop(socket, lambda: target.kill(pid)))
            finally:
                if finished != 0:  # the stream ends before the process: it must not outlive it
                    with contextlib.suppress(WrennError):
                        await target.kill(pid)
    finally:
        socket.streams.touch(target)


@router.websocket("/{id}/processes/{selector}/stream")
async def process_stream(websocket: WebSocket, id: str, selector: str) -> None:
    socket = await accept(websocket)
    if socket is not None:
        await serve(socket, _attach(socket, id, selector))


async def _attach(socket: Socket, capsule: str, process: str) -> None:
    target = await open_target(socket, capsule)
    try:
        pid, tag = process_selector(process)
        async with aclosing(target.attach(pid, tag)) as events:
            await socket.send({"type": "start", "pid": (await first_start(events)).pid})
            await first_of(relay(socket, events), until_stop(socket))
    finally:
        socket.streams.touch(target)
