"""`wrenn up`: the control plane and one local host agent in one process, on one machine."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from .controlplane.app import create_app
from .controlplane.services.bootstrap import ensure_admin_key, local_host_registration
from .controlplane.settings import ControlPlaneSettings
from .hostagent.app import HostAgent
from .hostagent.local import LocalStub
from .hostagent.settings import AgentSettings


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # `up` owns the signals: it stops the agent before the HTTP server.
        yield


def read_env_file(path: Path) -> dict[str, str]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


async def run_embedded(cp_settings: ControlPlaneSettings, agent_settings: AgentSettings) -> None:
    host, _, port = cp_settings.listen.rpartition(":")
    host = host or "127.0.0.1"
    app = create_app(cp_settings)
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
            raise SystemExit(f"the control plane could not start on {cp_settings.listen}")
        await asyncio.sleep(0.02)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    agent = HostAgent(agent_settings)
    try:
        control_plane = app.state.control_plane
        env_path = cp_settings.dir / "env"
        key = await ensure_admin_key(control_plane.sessionmaker, read_env_file(env_path).get("WRENN_API_KEY"))
        token = await local_host_registration(control_plane.sessionmaker, agent_settings.advertised_address)
        base_url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
        agent_settings.cp_url = agent_settings.cp_url or base_url
        await agent.start(token or "")
        assert agent.servicer is not None
        control_plane.pool.attach_local(agent_settings.advertised_address, LocalStub(agent.servicer))
        control_plane.reconciler.kick()
        lines = [
            f"WRENN_BASE_URL={base_url}",
            f"WRENN_API_KEY={key}",
            f"WRENN_PROXY_DOMAIN={cp_settings.proxy_domain or f'localhost:{port}'}",
        ]
        tmp = env_path.with_suffix(".tmp")  # whoever waits for the file never reads half of it
        tmp.unlink(missing_ok=True)
        tmp.touch(mode=0o600)  # it holds the admin key
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(env_path)
        print("\n".join(lines), flush=True)
        print(
            f"# wrenn is up (runtime {agent.manager.runtime.name if agent.manager else '?'}); "
            f"`set -a; . {env_path}` configures the SDK; Ctrl-C stops",
            flush=True,
        )
        stop_wait = asyncio.create_task(stop.wait())
        await asyncio.wait({stop_wait, serving}, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
    finally:
        await agent.stop()
        server.should_exit = True
        await serving
