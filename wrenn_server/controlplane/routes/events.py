"""Server-sent events: `GET /v1/events/stream` (docs/api.md, "Events")."""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from ..services.auth import Principal
from ..services.events import Event, EventBus, EventName
from .deps import CP, Caller

router = APIRouter(prefix="/v1/events", tags=["events"])

# `event` is repeated inside the data because the SDK reads only `data:` lines.
CONNECTED = f'event: {EventName.CONNECTED.value}\ndata: {{"event":"connected","message":"connected"}}\n\n'.encode()
KEEPALIVE = b": keepalive\n\n"
# How often an idle stream checks whether the server is shutting down.
SHUTDOWN_POLL_SEC = 1.0


@router.get(
    "/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "One SSE frame per event."}},
)
async def stream_events(principal: Caller, cp: CP) -> StreamingResponse:
    """Lifecycle events of the caller's team (of every team for admins) from now on: a `connected` frame
    first, then `event: <name>` / `data: <json>` frames, and a keepalive comment when idle."""
    frames = _frames(cp.events.bus, principal, cp.settings.sse_keepalive_sec)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(frames, media_type="text/event-stream", headers=headers)


def _frame(event: Event) -> bytes:
    return f"event: {event.name.value}\ndata: {event.data}\n\n".encode()


async def _frames(bus: EventBus, principal: Principal, keepalive: float) -> AsyncIterator[bytes]:
    """The stream's frames; the subscription ends with it (client gone, bus closed or this reader dropped)."""
    with bus.subscribe() as events:
        yield CONNECTED
        quiet_until = time.monotonic() + keepalive
        while not server_exiting():
            wait = min(SHUTDOWN_POLL_SEC, max(quiet_until - time.monotonic(), 0.0))
            try:
                event = await events.next(timeout=wait)
            except StopAsyncIteration:
                return
            if event is not None and event.visible_to(principal):
                yield _frame(event)
            elif time.monotonic() >= quiet_until:
                yield KEEPALIVE
            else:
                continue
            quiet_until = time.monotonic() + keepalive


def server_exiting() -> bool:
    """Whether uvicorn has begun a graceful shutdown.

    uvicorn sends the lifespan shutdown (which closes the bus, ending every stream) only once all responses
    have finished, so an open stream would hold the shutdown forever. Its signal handler is the bound
    `Server.handle_exit`, which sets `Server.should_exit`: streams watch that flag and end themselves. When
    the server runs elsewhere than the main thread (no signal handler), streams end when the bus closes.
    """
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    return getattr(server, "should_exit", False) is True
