"""Wrenn's server as a library: build it (`create_app`) or run it (`run`) with extensions of your own.

`wrenn control-plane` is `run(ControlPlaneSettings())`; `wrenn up` is the same with `agent=AgentSettings()`
(a host agent in the same process). Both load the extensions installed under the entry-point group
`wrenn.extensions` unless given `extensions`. See docs/extensions.md.

    from wrenn_server.server import ControlPlaneSettings, ExtensionSetup, run

    def billing(setup: ExtensionSetup) -> None:
        setup.include_router(router)

    run(ControlPlaneSettings(), {"billing": billing})
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import uvicorn

from .controlplane.app import create_app
from .controlplane.extensions import (
    ENTRY_POINT_GROUP,
    Context,
    Extension,
    ExtensionError,
    ExtensionSetup,
    ServerContext,
    Worker,
    discover,
)
from .controlplane.routes.deps import Admin, Caller
from .controlplane.services.auth import Principal
from .controlplane.settings import ControlPlaneSettings

if TYPE_CHECKING:
    from .hostagent.settings import AgentSettings

__all__ = [
    "ENTRY_POINT_GROUP",
    "Admin",
    "Caller",
    "Context",
    "ControlPlaneSettings",
    "Extension",
    "ExtensionError",
    "ExtensionSetup",
    "Principal",
    "ServerContext",
    "Worker",
    "create_app",
    "discover",
    "run",
    "serve",
]


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # `serve` owns the signals: it stops the local agent, if any, before the HTTP server.
        yield


def run(
    settings: ControlPlaneSettings,
    extensions: Mapping[str, Extension] | None = None,
    *,
    agent: AgentSettings | None = None,
) -> None:
    """Serve the control plane until SIGINT or SIGTERM (see `serve`)."""
    asyncio.run(serve(settings, extensions, agent=agent))


async def serve(
    settings: ControlPlaneSettings,
    extensions: Mapping[str, Extension] | None = None,
    *,
    agent: AgentSettings | None = None,
) -> None:
    """Serve the control plane on `settings.listen` until SIGINT or SIGTERM; with `agent`, also a host agent
    in this process, registered with it (`wrenn up`).

    `extensions`: by name; None loads those of the entry-point group `wrenn.extensions`. Raises
    `ExtensionError` before anything starts when one cannot be loaded or set up.
    """
    host, _, port = settings.listen.rpartition(":")
    host = host or "127.0.0.1"
    app = create_app(settings, extensions)
    server = _Server(
        uvicorn.Config(
            app,
            host=host,
            port=int(port),
            log_level="warning",
            access_log=False,
            ws="websockets-sansio",
            lifespan="on",
            timeout_graceful_shutdown=3,  # open event streams and sockets must not hold a shutdown forever
        )
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            await serving
            raise SystemExit(f"the control plane could not start on {settings.listen}")
        await asyncio.sleep(0.02)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    local = None
    try:
        if agent is not None:
            from .embedded import LocalAgent  # only `wrenn up` needs the host agent's modules

            local = LocalAgent(app.state.control_plane, settings, agent)
            await local.start(f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}")
        stop_wait = asyncio.create_task(stop.wait())
        await asyncio.wait({stop_wait, serving}, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
    finally:
        if local is not None:
            await local.stop()
        server.should_exit = True
        await serving
