"""Runs the real control plane under uvicorn in a thread, and reaches into its database for setup."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from wrenn_server.controlplane.app import create_app
from wrenn_server.controlplane.db.engine import SessionMaker, make_engine, make_sessionmaker
from wrenn_server.controlplane.db.models import Host, Sandbox, Template
from wrenn_server.controlplane.db.types import utcnow
from wrenn_server.controlplane.ids import Kind, format_id, new_uuid, parse_id
from wrenn_server.controlplane.services import hosts as host_service
from wrenn_server.controlplane.services.teams import add_api_key, create_team
from wrenn_server.controlplane.settings import ControlPlaneSettings

from .pg import free_port

# The secret the control plane presents to host agents (`x-wrenn-agent-token`); every host row carries it.
AGENT_TOKEN = "test-rpc-token"


class ServerThread:
    """uvicorn serving `create_app(settings)` on a free loopback port."""

    def __init__(self, settings: ControlPlaneSettings) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            ws="none",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="wrenn-cp", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Blocks until the server listens: from async code, run it in a thread (`asyncio.to_thread`)
        so the host agent, which serves from the test loop, keeps answering meanwhile."""
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("control plane did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@asynccontextmanager
async def serving(settings: ControlPlaneSettings, ws: str | None = None) -> AsyncIterator[ServerThread]:
    """A control plane over HTTP for the block (`ws`: the WebSocket implementation, if any)."""
    thread = ServerThread(settings)
    if ws is not None:
        thread.server.config.ws = ws  # read when the server starts
    await asyncio.to_thread(thread.start)
    try:
        yield thread
    finally:
        await asyncio.to_thread(thread.stop)


def settings_for(data_dir: Path, database_url: str, **overrides: Any) -> ControlPlaneSettings:
    values: dict[str, Any] = {
        "dir": data_dir,
        "database_url": database_url,
        "jwt_secret": "test-secret-" + "x" * 32,
        "reconcile_interval_sec": 3600,
        "host_stale_sec": 3600,
        "create_wait_sec": 30,
        "log_level": "warning",
        **overrides,
    }
    return ControlPlaneSettings(**values)


@dataclass
class Harness:
    """Direct database access (through the service layer) for arranging test situations."""

    settings: ControlPlaneSettings
    base_url: str
    engine: AsyncEngine
    sessionmaker: SessionMaker = field(init=False)

    def __post_init__(self) -> None:
        self.sessionmaker = make_sessionmaker(self.engine)

    @classmethod
    def connect(cls, settings: ControlPlaneSettings, base_url: str) -> Harness:
        return cls(settings, base_url, make_engine(settings.database_url))

    async def team(self, *, byoc: bool = False) -> tuple[uuid.UUID, str]:
        """A new team and an API key for it."""
        async with self.sessionmaker() as session:
            team = await create_team(session, "Test team", byoc=byoc)
            _, key = await add_api_key(session, team.id)
            await session.commit()
            return team.id, key

    async def host(
        self,
        team_id: uuid.UUID | None = None,
        *,
        cpu_cores: int = 4,
        memory_mb: int = 8192,
        status: str = "online",
        address: str | None = None,
        runtime: str = "",
        capabilities: dict[str, Any] | None = None,
    ) -> uuid.UUID:
        """A host row as a registered agent's would be (`runtime`, `capabilities`: what its agent reports)."""
        async with self.sessionmaker() as session:
            host = Host(
                id=new_uuid(),
                type="byoc" if team_id else "regular",
                team_id=team_id,
                cpu_cores=cpu_cores,
                memory_mb=memory_mb,
                disk_gb=100,
                address=address or f"127.0.0.1:{free_port()}",
                status=status,
                last_heartbeat_at=utcnow(),
                rpc_token=AGENT_TOKEN,
                runtime=runtime,
                capabilities=capabilities or {},
            )
            session.add(host)
            await session.commit()
            return host.id

    async def pending_host(self, team_id: uuid.UUID | None = None) -> tuple[uuid.UUID, str]:
        async with self.sessionmaker() as session:
            host, token = await host_service.create_host(
                session, type="byoc" if team_id else "regular", team_id=team_id
            )
            await session.commit()
            return host.id, token

    async def capsule(self, team_id: uuid.UUID, status: str, host_id: uuid.UUID | None = None) -> str:
        """A capsule row in the given status; returns its wire ID."""
        async with self.sessionmaker() as session:
            row = Sandbox(
                id=new_uuid(),
                team_id=team_id,
                host_id=host_id,
                template="minimal",
                status=status,
                vcpus=1,
                memory_mb=512,
            )
            session.add(row)
            await session.commit()
            return format_id(Kind.SANDBOX, row.id)

    async def template(self, team_id: uuid.UUID, name: str) -> uuid.UUID:
        """A team template row (its files are whatever the host has, or has not, for it)."""
        async with self.sessionmaker() as session:
            row = Template(id=new_uuid(), name=name, type="base", team_id=team_id)
            session.add(row)
            await session.commit()
            return row.id

    async def row(self, wire_id: str) -> Sandbox:
        """The capsule's row as the database has it now."""
        async with self.sessionmaker() as session:
            row = await session.get(Sandbox, parse_id(Kind.SANDBOX, wire_id), populate_existing=True)
            assert row is not None, wire_id
            return row

    async def set_status(self, wire_id: str, status: str) -> None:
        async with self.sessionmaker() as session:
            await session.execute(
                update(Sandbox)
                .where(Sandbox.id == parse_id(Kind.SANDBOX, wire_id))
                .values(status=status, last_updated=utcnow())
            )
            await session.commit()

    async def count_capsules(self, team_id: uuid.UUID) -> int:
        return len(await self.rows(team_id))

    async def rows(self, team_id: uuid.UUID) -> list[Sandbox]:
        """Every capsule row of the team, listed or not."""
        async with self.sessionmaker() as session:
            return list((await session.scalars(select(Sandbox).where(Sandbox.team_id == team_id))).all())

    async def close(self) -> None:
        await self.engine.dispose()
