"""Extensions: code outside this package that adds routes, middleware and background workers to the control
plane, without copying its bootstrap (docs/extensions.md).

An extension is a callable taking an `ExtensionSetup`. It runs once, in `create_app`, before the server
starts: there it includes routers, adds middleware and registers workers. Workers are coroutines taking the
`ServerContext` (settings, database, event bus, agent pool); they start once the control plane is up and are
cancelled at shutdown, before the database and the bus close. A route reaches the same context through the
`Context` dependency, and the server's authentication through `routes.deps.Caller`.

Extensions are found through the entry-point group `wrenn.extensions` (`discover()`), or passed by whoever
calls `create_app`/`run` themselves. Nothing here connects or starts anything at import.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Annotated, Any, Protocol, cast

from fastapi import APIRouter, Depends, FastAPI, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from .db.engine import SessionMaker
from .services.agents import AgentPool
from .services.events import EventBus
from .settings import ControlPlaneSettings

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "wrenn.extensions"
STOP_GRACE_SEC = 5.0  # how long a cancelled worker may take to clean up before shutdown goes on without it


class ExtensionError(Exception):
    """An extension could not be loaded or set up; the message names it and says why."""


@dataclass(frozen=True)
class ServerContext:
    """What a running control plane shares with its extensions."""

    settings: ControlPlaneSettings
    engine: AsyncEngine
    sessionmaker: SessionMaker
    bus: EventBus
    pool: AgentPool


Worker = Callable[[ServerContext], Awaitable[None]]


class Extension(Protocol):
    """What an entry point of `wrenn.extensions` names: called once with the setup of the app being built."""

    def __call__(self, setup: ExtensionSetup, /) -> None: ...


class ExtensionSetup:
    """What one extension may add to the app being built."""

    def __init__(self, name: str, settings: ControlPlaneSettings, app: FastAPI) -> None:
        self.name = name
        self.settings = settings
        self._app = app
        self.workers: list[tuple[str, Worker]] = []

    def include_router(self, router: APIRouter, **options: Any) -> None:
        """Serve `router`'s routes (after the core's: a core route cannot be shadowed)."""
        self._app.include_router(router, **options)

    def add_middleware(self, middleware: Any, **options: Any) -> None:
        """Wrap the app in `middleware` (a Starlette middleware class); it sees every request, the core's too,
        before the core's own middleware does."""
        self._app.add_middleware(middleware, **options)

    def add_worker(self, worker: Worker, name: str | None = None) -> None:
        """Run `worker(context)` while the server runs; it is cancelled at shutdown."""
        self.workers.append((f"{self.name}:{name or getattr(worker, '__name__', 'worker')}", worker))


def discover(group: str = ENTRY_POINT_GROUP) -> dict[str, Extension]:
    """The extensions installed in this environment, by entry-point name (sorted, so the order is stable)."""
    found: dict[str, Extension] = {}
    for point in sorted(entry_points(group=group), key=lambda p: p.name):
        origin = f"{point.value}, from {point.dist.name} {point.dist.version}" if point.dist else point.value
        try:
            loaded = point.load()
        except Exception as exc:
            log.debug("extension %s failed to load", point.name, exc_info=True)
            raise ExtensionError(
                f"extension {point.name!r} ({origin}) failed to load: {type(exc).__name__}: {exc} "
                f"(fix it, or uninstall it to run without it)"
            ) from exc
        if not callable(loaded):
            raise ExtensionError(
                f"extension {point.name!r} ({origin}) is a {type(loaded).__name__}, not a callable taking an "
                "ExtensionSetup"
            )
        found[point.name] = cast(Extension, loaded)
    return found


def install(
    app: FastAPI, settings: ControlPlaneSettings, extensions: Mapping[str, Extension]
) -> list[tuple[str, Worker]]:
    """Let each extension add to `app`; answers the workers they registered, in order."""
    workers: list[tuple[str, Worker]] = []
    for name, extension in extensions.items():
        setup = ExtensionSetup(name, settings, app)
        try:
            extension(setup)
        except Exception as exc:
            log.debug("extension %s failed to set up", name, exc_info=True)
            raise ExtensionError(f"extension {name!r} failed to set up: {type(exc).__name__}: {exc}") from exc
        workers.extend(setup.workers)
        log.info("extension %s installed (%d workers)", name, len(setup.workers))
    return workers


class Workers:
    """The extensions' workers of one running server: started together, cancelled together."""

    def __init__(self, workers: list[tuple[str, Worker]], context: ServerContext) -> None:
        self._tasks = [asyncio.create_task(self._run(name, worker, context), name=name) for name, worker in workers]
        for name, _ in workers:
            log.info("extension worker %s started", name)

    @staticmethod
    async def _run(name: str, worker: Worker, context: ServerContext) -> None:
        try:
            await worker(context)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The server goes on without it: a worker's failure is its extension's, not the platform's.
            log.exception("extension worker %s failed", name)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=STOP_GRACE_SEC)
        for task in pending:
            log.warning(
                "extension worker %s did not stop within %.0f s of its cancellation", task.get_name(), STOP_GRACE_SEC
            )


async def server_context(request: Request) -> ServerContext:
    return cast(ServerContext, request.app.state.server_context)


Context = Annotated[ServerContext, Depends(server_context)]
