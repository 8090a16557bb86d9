"""Keeps capsule rows honest about what hosts really run (docs/lifecycle.md, "The reconciler").

Passive: hosts silent for longer than `host_stale_sec` become `unreachable`, their live capsules `missing`.
Active: every online host is asked for its sandboxes; rows are corrected with compare-and-set updates
guarded by `last_updated`, so a row that changed while the agent was being asked is left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import select, update
from sqlalchemy.engine import CursorResult

from ..db.engine import SessionMaker
from ..db.models import Host, Sandbox
from ..db.types import utcnow
from ..errors import WrennError
from ..ids import Kind, format_id
from .agents import AgentPool, HostRef, agent_status
from .events import SYSTEM, CapsuleEvents, EventName
from .lifecycle import DESTROYED, destroy_on_agent
from .status import LOST_WITH_HOST, HostStatus, Status

log = logging.getLogger(__name__)
# A `starting` row no process is booting any more is given at most this long before it is judged (less when
# the transition grace is shorter: `wrenn up`, alone on its database, judges a create cut short at once).
STARTING_GRACE = timedelta(minutes=10)
TRANSITION_GRACE = timedelta(minutes=5)  # no pause, resume or destroy takes longer (default of transition_grace_sec)
RETENTION = timedelta(hours=24)  # default of retention_hours
# Rows whose sandbox must not exist on a host any more: found alive, it is destroyed. A capsule that ended in
# `error` keeps its disk on its host for the retention period (docs/lifecycle.md, "Every end keeps its files").
STOPPED_OR_STOPPING = frozenset({Status.STOPPED, Status.STOPPING})
# Changes of state a control plane makes through its host, which one that died leaves half-way.
TRANSITIONS = frozenset({Status.PAUSING, Status.RESUMING, Status.SNAPSHOTTING, Status.STOPPING})
# Why a capsule ended or was lost, when its host cannot say more (docs/lifecycle.md, "End reasons").
NOT_ON_HOST = "its host agent no longer has this capsule"
FAILED_ON_HOST = "its host agent reported it failed"
HOST_SILENT = "its host stopped answering (no heartbeat for {seconds:g} s)"


_TRANSITION_NAMES = {Status.PAUSING: "pause", Status.RESUMING: "resume", Status.SNAPSHOTTING: "snapshot"}


class Reconciler:
    def __init__(
        self,
        sessionmaker: SessionMaker,
        pool: AgentPool,
        *,
        interval: float,
        host_stale_sec: float,
        is_booting: Callable[[uuid.UUID], bool],
        is_transitioning: Callable[[uuid.UUID], bool] = lambda _: False,
        transition_grace_sec: float = TRANSITION_GRACE.total_seconds(),
        retention_sec: float = RETENTION.total_seconds(),
        events: CapsuleEvents | None = None,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._events = events
        self._pool = pool
        self._interval = interval
        self._stale = timedelta(seconds=host_stale_sec)
        self._is_booting = is_booting
        self._is_transitioning = is_transitioning
        self._transition_grace = timedelta(seconds=transition_grace_sec)
        self._starting_grace = min(STARTING_GRACE, self._transition_grace)
        self._retention = timedelta(seconds=retention_sec)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="reconciler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def kick(self) -> None:
        """Run a pass now (a host registered or came back)."""
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:
                log.exception("reconciler pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()

    async def run_once(self) -> None:
        await self.mark_stale_hosts()
        async with self._sessionmaker() as session:
            hosts = (await session.scalars(select(Host).where(Host.status == HostStatus.ONLINE.value))).all()
            refs = [HostRef.of(host) for host in hosts]
        for ref in refs:
            try:
                await self.reconcile_host(ref)
            except WrennError as exc:
                log.info("reconcile of host %s skipped: %s", ref.address, exc.message)

    async def mark_stale_hosts(self) -> None:
        cutoff = utcnow() - self._stale
        async with self._sessionmaker() as session:
            stale = (
                await session.scalars(
                    select(Host.id).where(Host.status == HostStatus.ONLINE.value, Host.last_heartbeat_at < cutoff)
                )
            ).all()
            if not stale:
                return
            now = utcnow()
            silent = HOST_SILENT.format(seconds=self._stale.total_seconds())
            await session.execute(
                update(Host)
                .where(Host.id.in_(stale), Host.status == HostStatus.ONLINE.value)
                .values(status=HostStatus.UNREACHABLE.value, updated_at=now)
            )
            lost: list[tuple[uuid.UUID, Status]] = []
            for old in LOST_WITH_HOST:  # one update per status, so each move's `from` is known
                moved = await session.scalars(
                    update(Sandbox)
                    .where(Sandbox.host_id.in_(stale), Sandbox.status == old.value)
                    .values(status=Status.MISSING.value, last_updated=now, error=silent)
                    .returning(Sandbox.id)
                )
                lost += [(sandbox_id, old) for sandbox_id in moved.all()]
            await session.commit()
        for host_id in stale:
            log.warning("host %s stopped heartbeating; marked unreachable", format_id(Kind.HOST, host_id))
        for sandbox_id, old in lost:
            if self._events is not None:
                await self._events.state_changed(sandbox_id, old, Status.MISSING, SYSTEM, silent)

    async def reconcile_host(self, host: HostRef) -> None:
        # Rows are read before the agent is asked: a row that changes afterwards fails the CAS below.
        async with self._sessionmaker() as session:
            rows = (await session.scalars(select(Sandbox).where(Sandbox.host_id == host.id))).all()
            known = {row.id: (Status(row.status), row.last_updated, row.created_at) for row in rows}
        listing = await self._pool.client(host).list_sandboxes()
        alive = {info.sandbox_id: info for info in listing.sandboxes}
        auto_paused = set(listing.auto_paused_sandbox_ids)
        for sandbox_id, (status, stamp, created) in known.items():
            wire_id = format_id(Kind.SANDBOX, sandbox_id)
            info = alive.get(wire_id)
            agent = agent_status(info) if info is not None else None
            target = self._decide(sandbox_id, status, created, info is not None, agent, wire_id in auto_paused, stamp)
            if target is not None:
                await self._move(sandbox_id, status, stamp, target, self._reason(status, target, info))
            elif info is None:
                continue
            elif status in STOPPED_OR_STOPPING:  # the host still holds what the row says is gone
                log.info("destroying orphan %s on host %s", wire_id, host.address)
                await destroy_on_agent(self._pool, host, wire_id)
            elif status == Status.ERROR and utcnow() - stamp >= self._retention:  # its disk was kept long enough
                log.info("collecting the kept disk of %s on host %s", wire_id, host.address)
                await destroy_on_agent(self._pool, host, wire_id)

    def _decide(
        self,
        sandbox_id: uuid.UUID,
        status: Status,
        created: datetime,
        alive: bool,
        agent: Status | None,  # what the agent says (None: it does not know the capsule, or does not say)
        paused: bool,
        stamp: datetime,
    ) -> Status | None:
        if status in TRANSITIONS:
            # A pause, resume, snapshot or destroy whose control plane went away: the agent knows how it ended.
            # One that is young may still be under way in another control plane, which finishes it (and says so).
            if self._is_transitioning(sandbox_id) or utcnow() - stamp < self._transition_grace:
                return None
            if status == Status.STOPPING:
                return None if alive else Status.STOPPED
            if not alive:
                return Status.STOPPED
            return agent if agent in (Status.RUNNING, Status.PAUSED, Status.ERROR) else None
        if status == Status.STARTING:
            if self._is_booting(sandbox_id) or (not alive and utcnow() - created < self._starting_grace):
                return None
        if status not in (Status.RUNNING, Status.STARTING, Status.MISSING, Status.PAUSED):
            return None
        if agent == Status.ERROR:
            return Status.ERROR
        if alive and agent in (Status.RUNNING, None):
            return None if status == Status.RUNNING else Status.RUNNING
        if alive and agent == Status.PAUSED:
            return None if status == Status.PAUSED else Status.PAUSED
        if status == Status.PAUSED:
            return None  # a paused capsule need not be listed as alive
        if paused:
            return Status.PAUSED
        return Status.STOPPED

    @staticmethod
    def _reason(old: Status, new: Status, info: Any) -> str | None:
        """Why the capsule ended or was lost (None: it runs or is paused)."""
        if new == Status.ERROR:
            return str(info.error) if info is not None and info.error else FAILED_ON_HOST
        if new != Status.STOPPED:
            return None
        if old == Status.STOPPING:  # a destroy whose control plane went away
            return DESTROYED
        if old in (Status.PAUSING, Status.RESUMING, Status.SNAPSHOTTING):
            return f"{NOT_ON_HOST} after a {_TRANSITION_NAMES[old]} left half-way"
        return NOT_ON_HOST

    async def _move(self, sandbox_id: uuid.UUID, old: Status, stamp: datetime, new: Status, error: str | None) -> None:
        # A capsule found alive again (`missing` → `running`) keeps no reason of its loss.
        values: dict[str, object] = {"status": new.value, "last_updated": utcnow(), "error": error}
        async with self._sessionmaker() as session:
            result = cast(
                CursorResult[Any],
                await session.execute(
                    update(Sandbox)
                    .where(Sandbox.id == sandbox_id, Sandbox.status == old.value, Sandbox.last_updated == stamp)
                    .values(**values)
                ),
            )
            await session.commit()
        log.info("capsule %s: %s -> %s (reconciled)", format_id(Kind.SANDBOX, sandbox_id), old, new)
        if result.rowcount == 1 and self._events is not None:
            await self._events.state_changed(sandbox_id, old, new, SYSTEM, error)
            if old == Status.STOPPING:  # the destroy that was cut short is done
                await self._events.finished(EventName.CAPSULE_DESTROY, sandbox_id, SYSTEM)
