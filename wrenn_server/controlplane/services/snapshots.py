"""Snapshot templates: a running capsule's files and guest state, kept under a name its team creates from."""

from __future__ import annotations

import secrets
import uuid

from sqlalchemy import or_, select

from wrenn_server.proto._generated import hostagent_pb2 as pb

from ..db.engine import SessionMaker
from ..db.models import Host, Sandbox, Template
from ..db.types import utcnow
from ..errors import Forbidden, HostUnavailable, NotFound, TemplateNameTaken, WrennError
from ..ids import ZERO_UUID, Kind, format_id, new_uuid
from . import lifecycle
from .agents import AgentPool, HostRef
from .auth import Principal
from .capsules import CapsuleService, not_running
from .events import Actor, CapsuleEvents, EventName
from .status import FINAL, Status
from .templates import DEFAULT_TEMPLATE, check_safe_name

TYPES = ("base", "snapshot")


class SnapshotService:
    def __init__(
        self, sessionmaker: SessionMaker, pool: AgentPool, capsules: CapsuleService, events: CapsuleEvents
    ) -> None:
        self._sessionmaker = sessionmaker
        self._pool = pool
        self._capsules = capsules
        self._events = events

    async def create(
        self, principal: Principal, sandbox_id: uuid.UUID, name: str | None, overwrite: bool
    ) -> Template:
        name = check_safe_name(name) if name else f"template-{secrets.token_hex(4)}"
        async with self._sessionmaker() as session:
            row = await session.get(Sandbox, sandbox_id)
            if row is None or row.team_id != principal.team_id:
                raise NotFound("sandbox not found")
            # One that ended is snapshotted from the disk its host keeps: its files only (docs/lifecycle.md).
            ended = row.status == Status.ERROR.value
            if row.status != Status.RUNNING.value and not ended:
                raise not_running(row)
            if name == DEFAULT_TEMPLATE or await session.scalar(
                select(Template.id).where(Template.name == name, Template.team_id == ZERO_UUID)
            ):
                raise TemplateNameTaken(f"template name {name!r} is reserved by the platform")
            existing = await session.scalar(
                select(Template).where(Template.name == name, Template.team_id == principal.team_id)
            )
            if existing is not None and not overwrite:
                raise TemplateNameTaken(f"a template named {name!r} exists: pass overwrite=true to replace it")
            if existing is not None and existing.type != "snapshot":
                raise Forbidden(f"template {name!r} is not a snapshot and cannot be overwritten")
            template_id = existing.id if existing is not None else new_uuid()
            host = await session.get(Host, row.host_id) if row.host_id else None
            if host is None:
                raise HostUnavailable("the sandbox's host is gone")
            vcpus, memory_mb, host_ref = row.vcpus, row.memory_mb, HostRef.of(host)
        actor = Actor.of(principal)
        # From before the row says `snapshotting` until it says how it ended: the reconciler leaves it (one whose
        # control plane died meanwhile it settles from the host, docs/lifecycle.md).
        self._capsules.transition_started(sandbox_id)
        try:
            if ended:
                info = await self._pool.client(host_ref).snapshot_sandbox(
                    self._request(principal, sandbox_id, template_id)
                )
            else:
                info = await self._snapshot_on_agent(principal, sandbox_id, template_id, host_ref, actor)
        finally:
            self._capsules.transition_ended(sandbox_id)
        async with self._sessionmaker() as session:
            template = await session.get(Template, template_id)
            if template is None:
                template = Template(id=template_id, name=name, type="snapshot", team_id=principal.team_id)
                session.add(template)
            template.vcpus, template.memory_mb, template.size_bytes = vcpus, memory_mb, info.size_bytes
            template.meta = {"host_id": str(host_ref.id), "source": format_id(Kind.SANDBOX, sandbox_id)}
            if info.runtime:  # whose guest state it holds: only hosts whose runtime restores that may start it
                template.meta["runtime"] = info.runtime
            template.created_at = utcnow()
            await session.commit()
            await session.refresh(template)
        await self._events.template(EventName.TEMPLATE_SNAPSHOT_CREATE, principal, name)
        return template

    async def _snapshot_on_agent(
        self, principal: Principal, sandbox_id: uuid.UUID, template_id: uuid.UUID, host_ref: HostRef, actor: Actor
    ) -> pb.TemplateInfo:
        """`running` → `snapshotting` → SnapshotSandbox → `running` (or where the agent says the capsule is)."""
        if await lifecycle.set_status(self._sessionmaker, sandbox_id, [Status.RUNNING], Status.SNAPSHOTTING) is None:
            raise not_running(await self._capsules.get(principal, sandbox_id))
        await self._events.state_changed(sandbox_id, Status.RUNNING, Status.SNAPSHOTTING, actor)
        request = self._request(principal, sandbox_id, template_id)
        agent = self._pool.client(host_ref)
        try:
            info = await agent.snapshot_sandbox(request)
        except WrennError as exc:
            back = await lifecycle.status_on_agent(agent, request.sandbox_id, Status.RUNNING)
            reason = exc.message if back in FINAL else None  # the capsule did not survive it: say why
            await lifecycle.set_status(self._sessionmaker, sandbox_id, [Status.SNAPSHOTTING], back, error=reason)
            await self._events.state_changed(sandbox_id, Status.SNAPSHOTTING, back, actor, reason)
            raise
        await lifecycle.set_status(self._sessionmaker, sandbox_id, [Status.SNAPSHOTTING], Status.RUNNING)
        await self._events.state_changed(sandbox_id, Status.SNAPSHOTTING, Status.RUNNING, actor)
        return info

    @staticmethod
    def _request(principal: Principal, sandbox_id: uuid.UUID, template_id: uuid.UUID) -> pb.SnapshotRequest:
        return pb.SnapshotRequest(
            sandbox_id=format_id(Kind.SANDBOX, sandbox_id), team_id=str(principal.team_id), template_id=str(template_id)
        )

    async def list(self, principal: Principal, type_: str | None) -> list[Template]:
        async with self._sessionmaker() as session:
            query = select(Template).where(or_(Template.team_id == principal.team_id, Template.team_id == ZERO_UUID))
            if type_:
                query = query.where(Template.type == type_)
            return list((await session.scalars(query.order_by(Template.created_at, Template.name))).all())

    async def delete(self, principal: Principal, name: str) -> None:
        check_safe_name(name)
        async with self._sessionmaker() as session:
            rows = (
                await session.scalars(
                    select(Template).where(Template.name == name, Template.team_id.in_([principal.team_id, ZERO_UUID]))
                )
            ).all()
            own = next((t for t in rows if t.team_id == principal.team_id), None)
            if own is None:
                if rows:
                    raise Forbidden(f"template {name!r} belongs to the platform and cannot be deleted")
                raise NotFound("template not found")
            host_id = own.meta.get("host_id") if own.meta else None
            host = await session.get(Host, uuid.UUID(host_id)) if host_id else None
            template_id = own.id
            await session.delete(own)
            await session.commit()
        if host is not None:
            try:  # files stay while capsules made from the template run; the agent removes them after
                await self._pool.client(HostRef.of(host)).delete_template(str(principal.team_id), str(template_id))
            except WrennError:
                pass  # an unreachable host keeps the files; nothing refers to them any more
        await self._events.template(EventName.TEMPLATE_SNAPSHOT_DELETE, principal, name)
