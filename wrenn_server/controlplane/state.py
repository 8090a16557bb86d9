"""Everything one running control plane holds, built at startup and torn down at shutdown."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from .db.engine import SessionMaker, make_engine, make_sessionmaker
from .db.migrate import migrate
from .errors import Unauthorized
from .ids import hash_secret
from .schemas.capsules import capsule_json
from .services.activity import ActivityTracker
from .services.agents import AgentPool
from .services.auth import KeyCache, Principal, principal_from_api_key, principal_from_user_jwt
from .services.capsules import CapsuleService
from .services.events import CapsuleEvents, open_bus
from .services.exec import ExecService
from .services.files import FileService
from .services.metrics import MetricsService
from .services.reconciler import Reconciler
from .services.snapshots import SnapshotService
from .services.tasks import TaskTracker
from .settings import ControlPlaneSettings
from .upstream import Upstream


@dataclass
class ControlPlane:
    settings: ControlPlaneSettings
    jwt_secret: str
    engine: AsyncEngine
    sessionmaker: SessionMaker
    pool: AgentPool
    tasks: TaskTracker
    capsules: CapsuleService
    exec: ExecService
    files: FileService
    reconciler: Reconciler
    keys: KeyCache
    events: CapsuleEvents
    upstream: Upstream
    metrics: MetricsService
    snapshots: SnapshotService

    @classmethod
    async def start(cls, settings: ControlPlaneSettings) -> ControlPlane:
        settings.private_dir()
        jwt_secret = settings.resolve_jwt_secret()
        await migrate(settings)
        engine = make_engine(settings.database_url)
        sessionmaker = make_sessionmaker(engine)
        pool = AgentPool(jwt_secret)
        tasks = TaskTracker()
        activity = ActivityTracker(sessionmaker)
        events = CapsuleEvents(await open_bus(settings.redis_url), sessionmaker, capsule_json)
        capsules = CapsuleService(sessionmaker, pool, tasks, settings.create_wait_sec, activity, events)
        reconciler = Reconciler(
            sessionmaker,
            pool,
            interval=settings.reconcile_interval_sec,
            host_stale_sec=settings.host_stale_sec,
            is_booting=capsules.is_booting,
            is_transitioning=capsules.is_transitioning,
            transition_grace_sec=settings.transition_grace_sec,
            retention_sec=settings.retention_hours * 3600,
            events=events,
        )
        cp = cls(
            settings=settings,
            jwt_secret=jwt_secret,
            engine=engine,
            sessionmaker=sessionmaker,
            pool=pool,
            tasks=tasks,
            capsules=capsules,
            exec=ExecService(capsules, pool),
            files=FileService(capsules, pool),
            reconciler=reconciler,
            keys=KeyCache(),
            events=events,
            upstream=Upstream(),
            metrics=MetricsService(sessionmaker, pool, capsules),
            snapshots=SnapshotService(sessionmaker, pool, capsules, events),
        )
        reconciler.start()
        activity.start()
        cp.metrics.start()
        return cp

    async def authenticate(self, api_key: str | None, authorization: str | None) -> Principal:
        """`X-API-Key` first, then `Authorization: Bearer <JWT>`; anything else is 401."""
        if api_key:
            key_hash = hash_secret(api_key)
            cached = self.keys.get(key_hash)
            if cached is not None:
                return cached
        async with self.sessionmaker() as session:
            if api_key:
                principal = await principal_from_api_key(session, api_key)
                self.keys.put(key_hash, principal)
                return principal
            if authorization:
                scheme, _, token = authorization.partition(" ")
                if scheme.lower() == "bearer" and token.strip():
                    return await principal_from_user_jwt(session, self.jwt_secret, token.strip())
        raise Unauthorized("missing or invalid credentials: send X-API-Key or Authorization: Bearer")

    async def close(self) -> None:
        await self.metrics.stop()
        await self.upstream.close()
        await self.reconciler.stop()
        await self.capsules.activity.stop()
        await self.tasks.close()
        await self.events.bus.close()
        await self.pool.close()
        await self.engine.dispose()
