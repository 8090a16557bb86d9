"""The terminal WebSocket `/v1/capsules/{id}/pty`.

The first frame is JSON: `{"type":"start","cmd"?,"args"?,"cols"?,"rows"?,"envs"?,"cwd"?,"user"?}` runs a new
program on a terminal (tag `pty-<8hex>`), `{"type":"connect","tag"}` re-attaches to one. After that, terminal
bytes travel as binary frames both ways. Client control frames: `resize` {cols, rows}, `kill`; anything else
(the `pong` answering our `ping`) is ignored. Server control frames: `started` {tag, pid}, `exit` {exit_code},
`error` {data, fatal?}, `ping` every `pty_ping_sec` (30 s unless configured).

The program outlives the socket: a client that drops off re-attaches by tag, and the output written meanwhile
is replayed first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import cast

from fastapi import APIRouter, WebSocket

from ..errors import AgentError, WrennError
from ..ids import short_tag
from ..schemas.streams import PtyConnect, PtyStart, Resize
from ..services.pty import InputQueue
from ..services.streams import Event, Exited, Output, Target
from ..state import ControlPlane
from .streams import (
    FIRST_FRAME_SEC,
    BadFrame,
    Disconnected,
    Socket,
    accept,
    control,
    first_of,
    first_start,
    open_target,
    parse,
    report,
    serve,
)

router = APIRouter(prefix="/v1/capsules", tags=["pty"])

INPUT_DRAIN_SEC = 5.0
MAX_SEND_BYTES = 32 * 1024  # clients cap messages (the SDK's at 64 KiB)


@router.websocket("/{id}/pty")
async def pty(websocket: WebSocket, id: str) -> None:
    socket = await accept(websocket)
    if socket is not None:
        ping_every = cast(ControlPlane, websocket.app.state.control_plane).settings.pty_ping_sec
        await serve(socket, _session(socket, id, ping_every), fatal=True)


async def _session(socket: Socket, capsule: str, ping_every: float) -> None:
    target = await open_target(socket, capsule)
    try:
        tag, fresh = await _open(socket, target)
        async with aclosing(target.attach(tag=tag)) as events:
            try:
                pid = (await first_start(events)).pid
            except WrennError:
                if fresh:  # nobody learnt its tag: nobody could ever re-attach
                    with contextlib.suppress(WrennError):
                        await target.kill(tag=tag)
                raise
            await socket.send({"type": "started", "tag": tag, "pid": pid})
            await Terminal(socket, target, tag, ping_every).run(events)
    finally:
        socket.streams.touch(target)


async def _open(socket: Socket, target: Target) -> tuple[str, bool]:
    """Start or find the terminal the first frame asks for: (its tag, whether it is new)."""
    data = await socket.receive(FIRST_FRAME_SEC)
    if isinstance(data, bytes):
        raise BadFrame("the first frame must be a JSON 'start' or 'connect' frame, not terminal input")
    frame = control(data)
    if frame["type"] == "start":
        tag = short_tag("pty")
        await target.start_pty(parse(PtyStart, frame), tag)
        return tag, True
    if frame["type"] == "connect":
        return parse(PtyConnect, frame).tag, False
    raise BadFrame(f"the first frame must be 'start' or 'connect', not '{frame['type']}'")


class Terminal:
    """One attached client: output out, input in (queued and coalesced), control frames, keep-alive pings."""

    def __init__(self, socket: Socket, target: Target, tag: str, ping_every: float) -> None:
        self.socket = socket
        self.target = target
        self.tag = tag
        self.ping_every = ping_every
        self.input = InputQueue(lambda data: target.send_input(tag, data))

    async def run(self, events: AsyncIterator[Event]) -> None:
        """Until the program exits (`output` ends) or the client leaves or misbehaves (`read` ends)."""
        writer = asyncio.ensure_future(self.input.run(self.report))
        exited = False
        try:
            exited = await first_of(self.output(events), self.read(), self.ping()) == 0
        finally:
            if not exited:  # what the client typed just before it left still reaches the terminal
                await self.input.drain(INPUT_DRAIN_SEC)
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    async def report(self, message: str) -> None:
        await report(self.socket, message)

    async def output(self, events: AsyncIterator[Event]) -> None:
        """Output as binary frames, then `exit`. A send to a client that left is dropped: `read` notices it
        leave, after taking in whatever it sent before."""
        async for event in events:
            with contextlib.suppress(Disconnected):
                if isinstance(event, Exited):
                    await self.socket.send({"type": "exit", "exit_code": event.exit_code})
                elif isinstance(event, Output):
                    for start in range(0, len(event.data), MAX_SEND_BYTES):
                        await self.socket.send_bytes(event.data[start : start + MAX_SEND_BYTES])
            if isinstance(event, Exited):
                return
        raise AgentError("the terminal's stream ended before its program did")

    async def read(self) -> None:
        while True:
            data = await self.socket.receive()
            if isinstance(data, bytes):
                await self.input.put(data)
                continue
            frame = control(data)
            try:
                if frame["type"] == "resize":
                    size = parse(Resize, frame)
                    await self.target.resize(self.tag, size.cols, size.rows)
                elif frame["type"] == "kill":
                    await self.target.kill(tag=self.tag)  # the `exit` frame follows
            except BadFrame as exc:
                await self.report(exc.message)
            except WrennError as exc:
                await self.report(f"{frame['type']} failed: {exc.message}")

    async def ping(self) -> None:
        while True:
            await asyncio.sleep(self.ping_every)
            with contextlib.suppress(Disconnected):
                await self.socket.send({"type": "ping"})
