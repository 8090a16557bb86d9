"""Capsule create / list / get / destroy / ping, and the `running` guard used by exec and files."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Awaitable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from wrenn_server.proto._generated import hostagent_pb2 as pb

from ..db.engine import SessionMaker
from ..db.models import Host, Sandbox, Team
from ..db.types import utcnow
from ..errors import (
    Conflict,
    HostUnavailable,
    InternalError,
    InvalidState,
    NotFound,
    Unauthorized,
    WrennError,
)
from ..ids import Kind, format_id, new_uuid
from ..schemas.capsules import (
    DEFAULT_DISK_MB,
    DEFAULT_MEMORY_MB,
    DEFAULT_VCPUS,
    MIN_TIMEOUT_SEC,
    CreateCapsule,
)
from . import lifecycle, metric_store
from .activity import ActivityTracker
from .agents import AgentPool, HostRef
from .auth import Principal
from .events import Actor, CapsuleEvents, EventName
from .scheduler import Need, pick_host
from .status import FINAL, Status
from .tasks import TaskTracker, wait_bounded, wait_until
from .templates import DEFAULT_TEMPLATE, resolve_template


def _timeout(value: int | None) -> int:
    """0 (or absent) never expires; anything shorter than a minute is a minute."""
    return max(value, MIN_TIMEOUT_SEC) if value else 0


def not_running(row: Sandbox) -> InvalidState:
    """The refusal of a call that needs the capsule running; one that ended says why."""
    reason = f": {row.error}" if row.error and row.status == Status.ERROR else ""
    return InvalidState(f"sandbox is not running (status: {row.status}){reason}")


RUNNING_CACHE_SEC = 1.0


def _owns(principal: Principal | None, row: Sandbox) -> bool:
    return principal is None or row.team_id == principal.team_id


class CapsuleService:
    def __init__(
        self,
        sessionmaker: SessionMaker,
        pool: AgentPool,
        tasks: TaskTracker,
        wait_sec: float,
        activity: ActivityTracker,
        events: CapsuleEvents,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._events = events
        self.activity = activity
        self._running: dict[uuid.UUID, tuple[float, Sandbox, HostRef]] = {}
        self._pool = pool
        self._tasks = tasks
        self._wait_sec = wait_sec
        self._placement = asyncio.Lock()
        self._booting: dict[uuid.UUID, asyncio.Task[None]] = {}
        # Rows written but whose boot is not yet under way: the reconciler must not judge them in between.
        self._placing: set[uuid.UUID] = set()
        self._transitions: Counter[uuid.UUID] = Counter()  # pauses, resumes and destroys this process is making

    def is_transitioning(self, sandbox_id: uuid.UUID) -> bool:
        """Whether this process is pausing, resuming or destroying the capsule now."""
        return self._transitions[sandbox_id] > 0

    def transition_started(self, sandbox_id: uuid.UUID) -> None:
        """This process is changing the capsule's state (the reconciler leaves the row alone until it ends)."""
        self._transitions[sandbox_id] += 1

    def transition_ended(self, sandbox_id: uuid.UUID) -> None:
        self._transitions[sandbox_id] -= 1
        if not self._transitions[sandbox_id]:
            del self._transitions[sandbox_id]

    def is_booting(self, sandbox_id: uuid.UUID) -> bool:
        """Whether this process is still starting the capsule (the reconciler leaves those alone)."""
        task = self._booting.get(sandbox_id)
        return sandbox_id in self._placing or (task is not None and not task.done())

    async def create(self, principal: Principal, spec: CreateCapsule) -> Sandbox:
        """A capsule as `spec` asks (its limits checked by the schema), answered once it runs or the wait ends."""
        vcpus = spec.vcpus or DEFAULT_VCPUS
        memory_mb = spec.memory_mb or DEFAULT_MEMORY_MB
        disk_mb = spec.disk_size_mb or DEFAULT_DISK_MB
        timeout_sec = _timeout(spec.timeout_sec)
        metadata = dict(spec.metadata or {})
        async with self._placement, self._sessionmaker() as session:
            team = await session.get(Team, principal.team_id)
            if team is None or team.deleted_at is not None:
                raise Unauthorized("team not found")
            template = await resolve_template(session, team.id, spec.template or DEFAULT_TEMPLATE)
            need = Need(vcpus, memory_mb)
            if template.type == "snapshot":
                need = Need.of_snapshot(template, vcpus, memory_mb)
                vcpus, memory_mb = need.vcpus, need.memory_mb
            host = await pick_host(session, team, need)
            row = Sandbox(
                id=(row_id := new_uuid()),
                team_id=team.id,
                host_id=host.id,
                template=template.name,
                status=Status.STARTING.value,
                vcpus=vcpus,
                memory_mb=memory_mb,
                timeout_sec=timeout_sec,
                disk_size_mb=disk_mb,
                template_id=template.id,
                template_team_id=template.team_id,
                meta=metadata,
            )
            session.add(row)
            self._placing.add(row_id)
            try:
                await session.commit()
            except BaseException:
                self._placing.discard(row_id)
                raise
            request = pb.CreateSandboxRequest(
                sandbox_id=format_id(Kind.SANDBOX, row.id),
                template=template.name,
                template_id=str(template.id),
                team_id=str(template.team_id),
                vcpus=vcpus,
                memory_mb=memory_mb,
                timeout_sec=timeout_sec,
                disk_size_mb=disk_mb,
                default_user=template.default_user,
                default_env=dict(template.default_env or {}),
            )
            plan = lifecycle.BootPlan(row.id, HostRef.of(host), request, metadata, Actor.of(principal))
        running = asyncio.Event()
        boot = lifecycle.boot(self._sessionmaker, self._pool, plan, self._events, running)
        task = self._tasks.spawn(boot, name=f"boot-{row.id}")
        self._booting[row.id] = task
        self._placing.discard(row.id)
        task.add_done_callback(lambda _: self._booting.pop(row.id, None))
        # Answered once the row says running: the events published after that are not waited for.
        await wait_until(task, running, self._wait_sec)
        if task.done():
            if task.cancelled():
                raise InternalError("the control plane is shutting down")
            error = task.exception()
            if isinstance(error, WrennError):
                raise error
        return await self._load(row.id)

    async def _load(self, sandbox_id: uuid.UUID) -> Sandbox:
        async with self._sessionmaker() as session:
            row = await session.get(Sandbox, sandbox_id)
            if row is None:
                raise NotFound("sandbox not found")
            return row

    async def _scoped(self, session: AsyncSession, principal: Principal, sandbox_id: uuid.UUID) -> Sandbox:
        row = await session.get(Sandbox, sandbox_id, populate_existing=True)
        if row is None or row.team_id != principal.team_id:
            raise NotFound("sandbox not found")
        return row

    async def get(self, principal: Principal, sandbox_id: uuid.UUID) -> Sandbox:
        async with self._sessionmaker() as session:
            return await self._scoped(session, principal, sandbox_id)

    async def get_with_disk(self, principal: Principal, sandbox_id: uuid.UUID) -> tuple[Sandbox, int | None]:
        """The capsule and the MiB it wrote to disk on top of its template, as its host measures them now
        (None when the capsule holds no disk or its host does not answer)."""
        async with self._sessionmaker() as session:
            row = await self._scoped(session, principal, sandbox_id)
            host = await session.get(Host, row.host_id) if row.host_id else None
        if host is None or row.status not in (Status.RUNNING.value, Status.PAUSED.value):
            return row, None
        try:
            info = await self._pool.client(HostRef.of(host)).get_sandbox(format_id(Kind.SANDBOX, row.id))
        except WrennError:
            return row, None
        return row, -(-info.disk_used_bytes // (1024 * 1024))

    async def list(self, principal: Principal) -> list[Sandbox]:
        async with self._sessionmaker() as session:
            rows = await session.scalars(
                select(Sandbox)
                .where(Sandbox.team_id == principal.team_id, Sandbox.status.not_in([s.value for s in FINAL]))
                .order_by(Sandbox.created_at.desc(), Sandbox.id)
            )
            return list(rows.all())

    async def destroy(self, principal: Principal, sandbox_id: uuid.UUID) -> None:
        """Idempotent: finished capsules are left as they are; everything else ends `stopped`."""
        self._running.pop(sandbox_id, None)
        async with self._sessionmaker() as session:
            row = await self._scoped(session, principal, sandbox_id)
            host = await session.get(Host, row.host_id) if row.host_id else None
            host_ref = HostRef.of(host) if host is not None else None
        actor = Actor.of(principal)
        for _ in range(5):
            status = Status(row.status)
            if status in FINAL:
                if status == Status.ERROR and host_ref is not None:
                    # A failed capsule may still hold its disk and records on the host: free them, keep the status.
                    wire_id = format_id(Kind.SANDBOX, row.id)
                    self._tasks.spawn(lifecycle.destroy_on_agent(self._pool, host_ref, wire_id), name=f"free-{row.id}")
                return
            if status == Status.STOPPING:
                break
            if await lifecycle.set_status(self._sessionmaker, row.id, [status], Status.STOPPING):
                await self._events.state_changed(row.id, status, Status.STOPPING, actor)
                break
            row = await self._load(row.id)  # it changed under us: decide again
        else:
            raise Conflict("the sandbox is changing state; try again")
        teardown = lifecycle.teardown(self._sessionmaker, self._pool, row.id, host_ref, self._events, actor)
        self._transitions[row.id] += 1  # at once: the reconciler must not settle the row under the teardown
        await wait_bounded(self._tasks.spawn(self._ending(row.id, teardown), name=f"destroy-{row.id}"), self._wait_sec)

    async def _ending(self, sandbox_id: uuid.UUID, teardown: Awaitable[None]) -> None:
        try:
            await teardown
        finally:
            self.transition_ended(sandbox_id)

    async def running(self, principal: Principal | None, sandbox_id: uuid.UUID) -> tuple[Sandbox, HostRef]:
        """The capsule and its host, or 409 `invalid_state` unless it is running; any team's without `principal`.

        Answers from a one-second cache: this lookup precedes every exec and file call, and the host agent
        refuses work for a capsule that stopped running meanwhile, so a stale hit cannot do harm.
        """
        hit = self._running.get(sandbox_id)
        if hit is not None and hit[0] > time.monotonic() and _owns(principal, hit[1]):
            return hit[1], hit[2]
        row, host = await self._running_from_db(principal, sandbox_id)
        self._running[sandbox_id] = (time.monotonic() + RUNNING_CACHE_SEC, row, host)
        return row, host

    async def _running_from_db(self, principal: Principal | None, sandbox_id: uuid.UUID) -> tuple[Sandbox, HostRef]:
        if len(self._running) > 10_000:
            self._running.clear()
        async with self._sessionmaker() as session:
            found = (
                await session.execute(
                    select(Sandbox, Host).outerjoin(Host, Host.id == Sandbox.host_id).where(Sandbox.id == sandbox_id)
                )
            ).first()
            if found is None or not _owns(principal, found[0]):
                raise NotFound("sandbox not found")
            row, host = found
            if row.status != Status.RUNNING.value:
                raise not_running(row)
            if host is None:
                raise HostUnavailable("the sandbox's host is gone")
            return row, HostRef.of(host)

    def touch(self, sandbox_id: uuid.UUID) -> None:
        self.activity.mark(sandbox_id)

    async def ping(self, principal: Principal, sandbox_id: uuid.UUID) -> None:
        row, host = await self.running(principal, sandbox_id)
        await self._pool.client(host).ping_sandbox(format_id(Kind.SANDBOX, row.id))
        self.touch(row.id)

    async def pause(self, principal: Principal, sandbox_id: uuid.UUID) -> Sandbox:
        """running → pausing → paused, the whole guest kept; paused already: as it is."""
        return await self._transition(
            principal, sandbox_id, Status.RUNNING, Status.PAUSING, Status.PAUSED, EventName.CAPSULE_PAUSE
        )

    async def resume(self, principal: Principal, sandbox_id: uuid.UUID) -> Sandbox:
        """paused → resuming → running, where it stopped; running already: as it is. An `error` capsule whose
        host keeps its disk (docs/lifecycle.md, "Every end keeps its files") starts again from it, its processes
        gone."""
        return await self._transition(
            principal, sandbox_id, Status.PAUSED, Status.RESUMING, Status.RUNNING, EventName.CAPSULE_RESUME
        )

    async def _transition(
        self,
        principal: Principal,
        sandbox_id: uuid.UUID,
        source: Status,
        during: Status,
        target: Status,
        event: EventName,
    ) -> Sandbox:
        async with self._sessionmaker() as session:
            row = await self._scoped(session, principal, sandbox_id)
            host = await session.get(Host, row.host_id) if row.host_id else None
        if row.status == target.value:
            return row
        if target == Status.RUNNING and row.status == Status.ERROR.value:
            source = Status.ERROR  # started again from its disk, if its host still keeps it
        if row.status != source.value:
            if target == Status.PAUSED:
                raise not_running(row)
            raise InvalidState(f"sandbox is not paused (status: {row.status})")
        if host is None:
            raise HostUnavailable("the sandbox's host is gone")
        actor = Actor.of(principal)
        # From before the row says `pausing`/`resuming` until it says how it ended: the reconciler leaves it.
        self._transitions[row.id] += 1
        try:
            if await lifecycle.set_status(self._sessionmaker, row.id, [source], during) is None:
                raise Conflict("the sandbox is changing state; try again")
            self._running.pop(row.id, None)
            await self._events.state_changed(row.id, source, during, actor)
            agent = self._pool.client(HostRef.of(host))
            wire_id = format_id(Kind.SANDBOX, row.id)
            try:
                if target == Status.PAUSED:
                    await agent.pause_sandbox(wire_id)
                else:
                    await agent.resume_sandbox(wire_id)
            except NotFound as exc:
                if source != Status.ERROR:
                    raise
                await lifecycle.set_status(self._sessionmaker, row.id, [during], source, error=row.error)
                await self._events.state_changed(row.id, during, source, actor, row.error)
                gone = InvalidState("the sandbox ended and its host no longer keeps its disk")
                await self._events.finished(event, row.id, actor, error=gone.message)
                raise gone from exc
            except WrennError as exc:
                # The agent says what became of the capsule: back where it was, or lost (error).
                back = await lifecycle.status_on_agent(agent, wire_id, source)
                # An ended capsule that could not start again keeps the reason it ended for.
                error = row.error if back == source == Status.ERROR else exc.message
                await lifecycle.set_status(self._sessionmaker, row.id, [during], back, error=error)
                reason = exc.message if back in FINAL else None
                await self._events.state_changed(row.id, during, back, actor, reason)
                await self._events.finished(event, row.id, actor, error=exc.message)
                raise
            values: dict[str, object] = {"last_active_at": utcnow(), "error": None} if target == Status.RUNNING else {}
            await lifecycle.set_status(self._sessionmaker, row.id, [during], target, **values)
        finally:
            self.transition_ended(row.id)
        if target == Status.PAUSED:
            # The agent keeps a paused capsule's rings: they reach the database after the answer.
            tiers = ("10m", "2h", "24h")
            flush = metric_store.flush(self._sessionmaker, self._pool, HostRef.of(host), row.id, tiers)
            self._tasks.spawn(flush, name=f"metrics-{row.id}")
        await self._events.state_changed(row.id, during, target, actor)
        await self._events.finished(event, row.id, actor)
        return await self._load(row.id)
