"""Keeping a capsule's metric rings in the database when its host lets go of them (pause, destroy)."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

from sqlalchemy import delete

from ..db.engine import SessionMaker
from ..db.models import SandboxMetricPoint
from ..errors import WrennError
from ..ids import Kind, format_id
from .agents import AgentPool, HostRef

log = logging.getLogger(__name__)


async def flush(
    sessionmaker: SessionMaker, pool: AgentPool, host: HostRef, sandbox_id: uuid.UUID, tiers: tuple[str, ...]
) -> None:
    """Best effort: a capsule is paused or destroyed whether or not its samples could be kept."""
    try:
        answer = await pool.client(host).flush_sandbox_metrics(format_id(Kind.SANDBOX, sandbox_id))
    except WrennError as exc:
        log.info("metrics of %s were not kept: %s", sandbox_id, exc.message)
        return
    by_tier = {"10m": answer.points_10m, "2h": answer.points_2h, "24h": answer.points_24h}
    async with sessionmaker() as session:
        await session.execute(
            delete(SandboxMetricPoint).where(
                SandboxMetricPoint.sandbox_id == sandbox_id, SandboxMetricPoint.tier.in_(tiers)
            )
        )
        for tier in tiers:
            by_second = {p.timestamp_unix: p for p in by_tier[tier]}  # the primary key holds one per second
            for ts, p in by_second.items():
                session.add(
                    SandboxMetricPoint(
                        sandbox_id=sandbox_id,
                        tier=tier,
                        ts=datetime.fromtimestamp(ts, UTC),
                        cpu_pct=p.cpu_pct,
                        mem_bytes=p.mem_bytes,
                        disk_bytes=p.disk_bytes,
                    )
                )
        await session.commit()
