"""The slow halves of create and destroy, run as background tasks that survive the request.

Status changes are compare-and-set (`UPDATE … WHERE status IN (…)`), so a destroy that lands while a
create is still booting wins: the boot notices it lost the race and tears the new sandbox down.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import update
from sqlalchemy.engine import CursorResult

from wrenn_server.proto._generated import hostagent_pb2 as pb

from ..db.engine import SessionMaker
from ..db.models import Sandbox
from ..db.types import utcnow
from ..errors import InternalError, NotFound, WrennError
from ..ids import Kind, format_id
from . import metric_store
from .agents import AgentClient, AgentPool, HostRef, agent_status
from .events import Actor, CapsuleEvents, EventName
from .status import Status

log = logging.getLogger(__name__)
DESTROYED_WHILE_STARTING = "the capsule was destroyed while starting"
DESTROYED = "destroyed on request"  # the end reason of a capsule its team destroyed (docs/lifecycle.md)


async def set_status(
    sessionmaker: SessionMaker, sandbox_id: uuid.UUID, expected: Iterable[Status], new: Status, **values: Any
) -> Status | None:
    """Move a capsule to `new` only if it is still in one of `expected`; answers the status it moved from
    (None: it did not move)."""
    async with sessionmaker() as session:
        for old in expected:  # one compare-and-set per status, so the answer names the one it moved from
            result = cast(
                CursorResult[Any],
                await session.execute(
                    update(Sandbox)
                    .where(Sandbox.id == sandbox_id, Sandbox.status == old.value)
                    .values(status=new.value, last_updated=utcnow(), **values)
                ),
            )
            if result.rowcount == 1:
                await session.commit()
                return old
        return None


@dataclass(frozen=True)
class BootPlan:
    """Everything the boot task needs, copied out of the request's DB session."""

    sandbox_id: uuid.UUID
    host: HostRef
    request: pb.CreateSandboxRequest
    user_metadata: dict[str, str]
    actor: Actor


async def boot(
    sessionmaker: SessionMaker,
    pool: AgentPool,
    plan: BootPlan,
    events: CapsuleEvents,
    running: asyncio.Event | None = None,
) -> None:
    """CreateSandbox on the agent; `starting` → `running` (then `running` is set, before the events go out),
    or → `error` with the reason (then re-raise)."""
    wire_id = format_id(Kind.SANDBOX, plan.sandbox_id)
    agent = pool.client(plan.host)
    try:
        info = await agent.create_sandbox(plan.request)
        if agent_status(info) is Status.ERROR:
            raise InternalError(info.error or "the agent failed to start the sandbox")
    except Exception as exc:
        failure = exc if isinstance(exc, WrennError) else InternalError("internal error while starting")
        if not isinstance(exc, WrennError):
            log.exception("boot of %s failed", wire_id)
        old = await set_status(sessionmaker, plan.sandbox_id, [Status.STARTING], Status.ERROR, error=failure.message)
        if old is not None:
            await events.state_changed(plan.sandbox_id, old, Status.ERROR, plan.actor, failure.message)
        await events.finished(EventName.CAPSULE_CREATE, plan.sandbox_id, plan.actor, error=failure.message)
        raise failure from exc
    now = utcnow()
    metadata = {**plan.user_metadata, **dict(info.metadata)}
    old = await set_status(
        sessionmaker,
        plan.sandbox_id,
        [Status.STARTING, Status.RUNNING, Status.MISSING],  # the reconciler may have seen it first
        Status.RUNNING,
        started_at=now,
        last_active_at=now,
        host_ip=info.host_ip,
        meta=metadata,
    )
    if old is None:
        log.info("sandbox %s was destroyed while starting; removing it from its host", wire_id)
        await destroy_on_agent(pool, plan.host, wire_id)
        await events.finished(EventName.CAPSULE_CREATE, plan.sandbox_id, plan.actor, error=DESTROYED_WHILE_STARTING)
        return
    if running is not None:
        running.set()
    if old != Status.RUNNING:
        await events.state_changed(plan.sandbox_id, old, Status.RUNNING, plan.actor)
    await events.finished(EventName.CAPSULE_CREATE, plan.sandbox_id, plan.actor)


async def status_on_agent(agent: AgentClient, wire_id: str, fallback: Status) -> Status:
    """What the agent says became of a capsule after a call on it failed; `fallback` when it cannot say."""
    try:
        info = await agent.get_sandbox(wire_id)
    except WrennError:
        return fallback
    return agent_status(info) or fallback


async def destroy_on_agent(pool: AgentPool, host: HostRef, wire_id: str) -> None:
    """DestroySandbox; a sandbox the agent does not know is already gone. Other failures are logged:
    the reconciler removes sandboxes whose row is `stopped` once their host answers again."""
    try:
        await pool.client(host).destroy_sandbox(wire_id)
    except NotFound:
        pass
    except WrennError as exc:
        log.warning("destroy of %s on host %s failed: %s", wire_id, host.address, exc.message)


async def teardown(
    sessionmaker: SessionMaker,
    pool: AgentPool,
    sandbox_id: uuid.UUID,
    host: HostRef | None,
    events: CapsuleEvents,
    actor: Actor,
) -> None:
    """`stopping` → keep the 24 h metrics → agent DestroySandbox → `stopped`."""
    if host is not None:
        await metric_store.flush(sessionmaker, pool, host, sandbox_id, ("24h",))
        await destroy_on_agent(pool, host, format_id(Kind.SANDBOX, sandbox_id))
    await metric_store.forget_short_tiers(sessionmaker, sandbox_id)
    if await set_status(sessionmaker, sandbox_id, [Status.STOPPING], Status.STOPPED, error=DESTROYED):
        await events.state_changed(sandbox_id, Status.STOPPING, Status.STOPPED, actor, DESTROYED)
        await events.finished(EventName.CAPSULE_DESTROY, sandbox_id, actor)
