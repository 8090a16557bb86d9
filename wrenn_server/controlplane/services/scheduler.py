"""Least-loaded placement over the online hosts of the right kind.

Memory is admitted against what capsules on a host already hold (paused ones hold none); CPU may be
overcommitted (1.5 vCPUs per core) and only weighs in the score. A snapshot template's capsules go only to the
host that holds its files, and only while that host's runtime can restore the guest state it holds (the
`restores` of the capabilities its agent reports).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.models import Host, Sandbox, Team, Template
from ..errors import InvalidRequest, NoHostsAvailable
from ..ids import Kind, format_id
from .status import HOLDS_MEMORY, HostStatus

CPU_OVERCOMMIT = 1.5


@dataclass(frozen=True)
class Need:
    """What a capsule needs of its host: its size, and for a snapshot template the host holding its files
    and a runtime that restores the guest state in them."""

    vcpus: int
    memory_mb: int
    host: uuid.UUID | None = None
    restores: str | None = None  # the runtime whose guest state the template holds
    template: str = ""

    @classmethod
    def of_snapshot(cls, template: Template, vcpus: int, memory_mb: int) -> Need:
        meta = template.meta or {}
        return cls(
            template.vcpus or vcpus,
            template.memory_mb or memory_mb,
            uuid.UUID(meta["host_id"]) if meta.get("host_id") else None,
            meta.get("runtime") or None,  # older templates did not say: left to the agent
            template.name,
        )


def can_restore(host: Host, runtime: str) -> bool:
    """Whether the host's runtime, as its agent last reported, restores guest state made by `runtime`."""
    return runtime in (host.capabilities or {}).get("restores", ())


@dataclass(frozen=True)
class Load:
    vcpus: int
    memory_mb: int


def _eligible(team: Team) -> list[ColumnElement[bool]]:
    if team.is_byoc:
        return [Host.type == "byoc", Host.team_id == team.id]
    return [Host.type == "regular"]


async def _loads(session: AsyncSession, host_ids: list[uuid.UUID]) -> dict[uuid.UUID, Load]:
    rows = await session.execute(
        select(Sandbox.host_id, func.sum(Sandbox.vcpus), func.sum(Sandbox.memory_mb))
        .where(Sandbox.host_id.in_(host_ids), Sandbox.status.in_([s.value for s in HOLDS_MEMORY]))
        .group_by(Sandbox.host_id)
    )
    return {hid: Load(int(v or 0), int(m or 0)) for hid, v, m in rows.all() if hid is not None}


def _fits_at_all(host: Host, vcpus: int, memory_mb: int) -> bool:
    """Whether the host could ever run this capsule (0 = capacity not reported)."""
    cpu_ok = host.cpu_cores <= 0 or vcpus <= host.cpu_cores
    mem_ok = host.memory_mb <= 0 or memory_mb <= host.memory_mb
    return cpu_ok and mem_ok


def _score(host: Host, load: Load, vcpus: int, memory_mb: int) -> float | None:
    """Free share after placement (higher is better); None when the memory does not fit now."""
    mem_free = 1.0
    if host.memory_mb > 0:
        left = host.memory_mb - load.memory_mb - memory_mb
        if left < 0:
            return None
        mem_free = left / host.memory_mb
    cpu_free = 1.0
    if host.cpu_cores > 0:
        capacity = host.cpu_cores * CPU_OVERCOMMIT
        cpu_free = max(0.0, capacity - load.vcpus - vcpus) / capacity
    return min(mem_free, cpu_free)


async def pick_host(session: AsyncSession, team: Team, need: Need) -> Host:
    """The least loaded eligible host that has what the capsule needs."""
    vcpus, memory_mb = need.vcpus, need.memory_mb
    only = [Host.id == need.host] if need.host else []
    where = [Host.status == HostStatus.ONLINE.value, *_eligible(team), *only]
    hosts = list((await session.scalars(select(Host).where(*where).order_by(Host.id))).all())
    if not hosts:
        reason = "the host that holds this template is not online" if need.host else "no online hosts available"
        raise NoHostsAvailable(reason)
    if need.restores is not None:
        hosts = _restoring(hosts, need.restores, need.template)
    possible = [host for host in hosts if _fits_at_all(host, vcpus, memory_mb)]
    if not possible:
        cores = max(host.cpu_cores for host in hosts)
        memory = max(host.memory_mb for host in hosts)
        raise InvalidRequest(
            f"requested {vcpus} vCPUs and {memory_mb} MB of memory, more than any online host has "
            f"(largest: {cores} cores, {memory} MB)"
        )
    loads = await _loads(session, [host.id for host in possible])
    best: tuple[float, Host] | None = None
    for host in possible:
        score = _score(host, loads.get(host.id, Load(0, 0)), vcpus, memory_mb)
        if score is not None and (best is None or score > best[0]):
            best = (score, host)
    if best is None:
        raise NoHostsAvailable("no host has sufficient resources")
    return best[1]


def _restoring(hosts: list[Host], runtime: str, template: str) -> list[Host]:
    able = [host for host in hosts if can_restore(host, runtime)]
    if not able:
        runs = ", ".join(f"{format_id(Kind.HOST, h.id)} runs {h.runtime or 'an unreported runtime'}" for h in hosts)
        raise NoHostsAvailable(
            f"no online host can restore template {template!r}: it holds a {runtime} guest, and {runs}; "
            f"its capsules start again once that host's agent runs with WRENN_RUNTIME={runtime}"
        )
    return able
