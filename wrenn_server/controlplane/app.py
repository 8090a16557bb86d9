"""`create_app(settings, extensions)`: the control plane's ASGI application (`wrenn_server.server.run` serves
it under uvicorn)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI

from wrenn_server import __version__

from .errors import ERROR_RESPONSES, install_error_handlers
from .extensions import Extension, ServerContext, Workers, discover, install
from .limits import BodyLimitMiddleware
from .logs import configure_logging
from .proxy import PortProxy
from .routes import capsules, events, exec, files, health, hosts, metrics, processes, pty, snapshots, streams
from .settings import ControlPlaneSettings
from .state import ControlPlane


def create_app(settings: ControlPlaneSettings, extensions: Mapping[str, Extension] | None = None) -> FastAPI:
    """Build the app; the database is migrated and background loops start in the lifespan.

    `extensions` (by name) add routes, middleware and workers; None: those installed under the entry-point
    group `wrenn.extensions`. Raises `ExtensionError` when one cannot be loaded or set up.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Here rather than above: uvicorn (re)configures its loggers after the app is built.
        configure_logging(settings.log_level)
        control_plane = await ControlPlane.start(settings)
        app.state.control_plane = control_plane
        context = ServerContext(
            settings=settings,
            engine=control_plane.engine,
            sessionmaker=control_plane.sessionmaker,
            bus=control_plane.events.bus,
            pool=control_plane.pool,
        )
        app.state.server_context = context
        running = Workers(workers, context)
        try:
            yield
        finally:
            await running.stop()  # first: they may still use the database or the bus while they stop
            await control_plane.close()

    app = FastAPI(
        title="Wrenn control plane",
        version=__version__,
        description="Sandboxes (capsules) for AI agents.",
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
        responses=ERROR_RESPONSES,
    )
    app.state.settings = settings
    app.state.max_json_bytes = settings.max_json_bytes
    app.state.max_upload_bytes = settings.max_upload_bytes
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_json_bytes)
    app.add_middleware(PortProxy, required_auth=settings.proxy_auth == "required")  # outside the body limit
    # The router tries routes in turn (~10 us each here), so the busiest come first; none of them can shadow
    # another. metrics before capsules: its /v1/capsules/stats and /usage must win over /v1/capsules/{id}.
    for module in (exec, files, processes, health, metrics, capsules, hosts, streams, pty, events, snapshots):
        app.include_router(module.router)
    workers = install(app, settings, discover() if extensions is None else extensions)
    return app
