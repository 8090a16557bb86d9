"""A Wrenn extension as a closed build would write one (tests/test_extensions.py installs it for real).

- a route, `GET /v1/sample/whoami`, behind the server's own authentication, that reads the database and
  reports what the worker saw;
- a middleware that marks every response, the core's too, with `X-Sample-Extension`;
- a worker that follows the event bus: it writes `started`, then the name of each event, then `stopped` when
  the server cancels it, to `<WRENN_DIR>/sample-worker.log`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wrenn_server.controlplane.db.models import Team
from wrenn_server.server import Caller, Context, ExtensionSetup, ServerContext

HEADER = "X-Sample-Extension"
LOG = "sample-worker.log"

router = APIRouter()
seen: list[str] = []  # the events the worker saw, in order


@router.get("/v1/sample/whoami")
async def whoami(principal: Caller, context: Context) -> dict[str, Any]:
    async with context.sessionmaker() as session:
        teams = await session.scalar(select(func.count()).select_from(Team))
    return {"team_id": str(principal.team_id), "teams": teams, "events_seen": seen}


class Mark:
    """Plain ASGI, so streamed responses (SSE, downloads) and WebSockets pass through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def marked(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (HEADER.lower().encode(), b"1")]
            await send(message)

        await self.app(scope, receive, marked)


async def follow_events(context: ServerContext) -> None:
    path = context.settings.dir / LOG
    with path.open("a", buffering=1) as log:
        log.write("started\n")
        try:
            with context.bus.subscribe() as events:
                async for event in events:
                    seen.append(event.name.value)
                    log.write(f"{event.name.value}\n")
        except asyncio.CancelledError:
            log.write("stopped\n")
            raise


def setup(setup: ExtensionSetup) -> None:
    setup.include_router(router)
    setup.add_middleware(Mark)
    setup.add_worker(follow_events)
