"""`wrenn up`: one local host agent in the control plane's process, registered with it (the server loop is
`wrenn_server.server.serve`)."""

from __future__ import annotations

from pathlib import Path

from .controlplane.services.bootstrap import ensure_admin_key, local_host_registration
from .controlplane.settings import ControlPlaneSettings
from .controlplane.state import ControlPlane
from .hostagent.app import HostAgent
from .hostagent.local import LocalStub
from .hostagent.settings import AgentSettings


def read_env_file(path: Path) -> dict[str, str]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


class LocalAgent:
    """The host agent of `wrenn up`: calls to it skip gRPC; its start writes `<dir>/env` for the SDK."""

    def __init__(self, control_plane: ControlPlane, cp_settings: ControlPlaneSettings, settings: AgentSettings):
        self.control_plane = control_plane
        self.cp_settings = cp_settings
        self.settings = settings
        self.agent = HostAgent(settings)

    async def start(self, base_url: str) -> None:
        """Register and start the agent, then write and print the configuration lines (the admin key)."""
        control_plane, cp_settings, settings = self.control_plane, self.cp_settings, self.settings
        env_path = cp_settings.dir / "env"
        key = await ensure_admin_key(control_plane.sessionmaker, read_env_file(env_path).get("WRENN_API_KEY"))
        token = await local_host_registration(control_plane.sessionmaker, settings.advertised_address)
        settings.cp_url = settings.cp_url or base_url
        await self.agent.start(token or "")
        assert self.agent.servicer is not None
        control_plane.pool.attach_local(settings.advertised_address, LocalStub(self.agent.servicer))
        control_plane.reconciler.kick()
        port = base_url.rpartition(":")[2]
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
        manager = self.agent.manager
        print(
            f"# wrenn is up (runtime {manager.runtime.name if manager else '?'}); "
            f"`set -a; . {env_path}` configures the SDK; Ctrl-C stops",
            flush=True,
        )

    async def stop(self) -> None:
        await self.agent.stop()
