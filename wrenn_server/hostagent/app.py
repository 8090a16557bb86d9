"""Assembles a host agent: runtime, network, manager, gRPC server, registration and heartbeat."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path

from . import proc
from .layout import DataDir
from .manager import SandboxManager
from .network import Network
from .registration import Credentials, Heartbeat, RegistrationError, register
from .runtimes import select_runtime
from .runtimes.base import Runtime
from .server import Auth, Servicer, make_server
from .settings import AgentSettings
from .storage import Storage

log = logging.getLogger(__name__)
STATUS_EVERY_SEC = 2.0


class HostAgent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.auth = Auth()
        self.manager: SandboxManager | None = None
        self.servicer: Servicer | None = None
        self._server: object | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def credentials_path(self) -> Path:
        return DataDir(self.settings.dir).credentials

    async def start(self, registration_token: str = "") -> None:
        self.settings.dir.mkdir(parents=True, exist_ok=True)
        self.settings.dir.chmod(0o700)  # capsules' files, credentials: for root alone
        proc.install_reaper(asyncio.get_running_loop())
        runtime = await select_runtime(self.settings.runtime, self.settings.dir)
        self.manager = SandboxManager(
            runtime,
            Network(str(self.settings.dir.resolve())),
            Storage(self.settings.dir),
            checkpoint_after_sec=self.settings.checkpoint_after_sec,
            pool_size=self.settings.pool_size,
            pool_min_free_mb=self.settings.pool_min_free_mb,
            disk_reserve_mb=self.settings.disk_reserve_mb,
        )
        await self.manager.start()
        self.servicer = Servicer(self.manager, self.auth)
        server = make_server(self.servicer, self.settings.host_listen_addr)
        await server.start()
        self._server = server
        log.info("host agent serving on %s with runtime %s", self.settings.host_listen_addr, runtime.name)
        self._tasks.append(asyncio.create_task(self._report_status()))
        token = registration_token or self.settings.registration_token
        creds = Credentials.load(self.credentials_path)
        if token and self.settings.cp_url:
            creds = await self._register(token, creds, runtime)
        if creds is None:
            log.warning("not registered with a control plane: set WRENN_CP_URL and WRENN_REGISTRATION_TOKEN")
            return
        self.auth.token_hash = creds.rpc_token_hash
        beat = Heartbeat(
            creds, self.credentials_path, self.settings.heartbeat_sec, self.settings.dir, runtime, self._rotated
        )
        self._tasks.append(asyncio.create_task(beat.run()))

    async def _report_status(self) -> None:
        """Keep `agent-status.json` current: `wrenn doctor` cannot call the agent (only the control plane holds
        the token), so the agent tells it its runtime and warm pool this way, in a file for root alone."""
        path = DataDir(self.settings.dir).agent_status
        while self.manager is not None:
            status = {
                "address": self.settings.host_listen_addr,
                "runtime": self.manager.runtime.name,
                "pool": self.manager.pool.counters(),
                "at": time.time(),
            }
            tmp = path.with_suffix(".tmp")
            tmp.unlink(missing_ok=True)
            tmp.touch(mode=0o600)
            tmp.write_text(json.dumps(status))
            tmp.replace(path)
            await asyncio.sleep(STATUS_EVERY_SEC)

    def _rotated(self, token_hash: str) -> None:
        self.auth.token_hash = token_hash

    async def _register(self, token: str, saved: Credentials | None, runtime: Runtime) -> Credentials:
        """Redeem the one-time token. A token the control plane refuses (spent by this agent's first run, as
        it stays in a service's environment) leaves a registered agent on its saved credentials; an agent
        with none stops everything it started, so that it exits instead of holding slots and guests."""
        try:
            address = self.settings.advertised_address
            creds = await register(self.settings.cp_url, token, address, self.settings.dir, runtime)
        except RegistrationError as exc:
            if saved is not None and saved.cp_url == self.settings.cp_url:
                log.warning("registration not redone (%s); continuing as host %s", exc, saved.host_id)
                return saved
            await self.stop()
            raise
        creds.save(self.credentials_path)
        return creds

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            await self._server.stop(2)  # type: ignore[attr-defined]
        if self.manager is not None:
            await self.manager.close()
