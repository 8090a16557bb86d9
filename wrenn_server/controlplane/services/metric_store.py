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
    """Best effort: a capsule is paused or destroyed whether or not its samples could be kept.

    The agent hands its rings over and starts them afresh, so what it answers is added to what earlier pauses
    kept (a point of the same second replaces the stored one): a capsule paused, resumed and destroyed keeps
    its whole 24 h history."""
    try:
        answer = await pool.client(host).flush_sandbox_metrics(format_id(Kind.SANDBOX, sandbox_id))
    except WrennError as exc:
        log.info("metrics of %s were not kept: %s", sandbox_id, exc.message)
        return
    by_tier = {"10m": answer.points_10m, "2h": answer.points_2h, "24h": answer.points_24h}
    async with sessionmaker() as session:
        for tier in tiers:
            by_second = {
                datetime.fromtimestamp(p.timestamp_unix, UTC): p for p in by_tier[tier]
            }  # the primary key holds one per second
            if not by_second:
                continue
            await session.execute(
                delete(SandboxMetricPoint).where(
                    SandboxMetricPoint.sandbox_id == sandbox_id,
                    SandboxMetricPoint.tier == tier,
                    SandboxMetricPoint.ts.in_(list(by_second)),
                )
            )
            for ts, p in by_second.items():
                session.add(
                    SandboxMetricPoint(
                        sandbox_id=sandbox_id,
                        tier=tier,
                        ts=ts,
                        cpu_pct=p.cpu_pct,
                        mem_bytes=p.mem_bytes,
                        disk_bytes=p.disk_bytes,
                    )
                )
        await session.commit()


async def forget_short_tiers(sessionmaker: SessionMaker, sandbox_id: uuid.UUID) -> None:
    """A destroyed capsule keeps only its 24 h history (docs/api.md, "Metrics")."""
    async with sessionmaker() as session:
        await session.execute(
            delete(SandboxMetricPoint).where(
                SandboxMetricPoint.sandbox_id == sandbox_id, SandboxMetricPoint.tier.in_(("10m", "2h"))
            )
        )
        await session.commit()
