"""Least-loaded placement over the online hosts of the right kind.

Memory is admitted against what capsules on a host already hold (paused ones hold none); CPU may be
overcommitted (1.5 vCPUs per core) and only weighs in the score.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.models import Host, Sandbox, Team
from ..errors import InvalidRequest, NoHostsAvailable
from .status import HOLDS_MEMORY, HostStatus

CPU_OVERCOMMIT = 1.5


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


async def pick_host(
    session: AsyncSession, team: Team, vcpus: int, memory_mb: int, only: uuid.UUID | None = None
) -> Host:
    """The least loaded eligible host; `only`: the one host that has what the capsule needs (a snapshot)."""
    where = [Host.status == HostStatus.ONLINE.value, *_eligible(team)] + ([Host.id == only] if only else [])
    hosts = list((await session.scalars(select(Host).where(*where).order_by(Host.id))).all())
    if not hosts:
        reason = "the host that holds this template is not online" if only else "no online hosts available"
        raise NoHostsAvailable(reason)
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
