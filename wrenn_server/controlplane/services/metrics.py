"""Metrics: a capsule's samples (the host agent's rings while it runs, the database afterwards), team stats
from a sampler every 10 s, and daily usage rolled up from those samples (docs/api.md, "Metrics")."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import delete, func, select

from ..db.engine import SessionMaker
from ..db.models import DailyUsage, Sandbox, SandboxMetricPoint, SandboxMetricsSnapshot
from ..errors import InvalidRequest, NotFound
from ..ids import Kind, format_id
from ..schemas.metrics import (
    CapsuleMetrics,
    CapsuleStats,
    Current,
    MetricPoint,
    MetricRange,
    Peaks,
    Series,
    StatsRange,
    Usage,
    UsagePoint,
)
from .agents import AgentPool
from .auth import Principal
from .capsules import CapsuleService
from .status import Status

log = logging.getLogger(__name__)

# Capsule metric ranges: the ring tier that answers, and how far back.
METRIC_RANGES: dict[MetricRange, tuple[str, int]] = {
    "5m": ("10m", 300),
    "10m": ("10m", 600),
    "1h": ("2h", 3600),
    "2h": ("2h", 7200),
    "6h": ("24h", 21600),
    "12h": ("24h", 43200),
    "24h": ("24h", 86400),
}
# Team stats ranges: window and bucket, both in seconds.
STATS_RANGES: dict[StatsRange, tuple[int, int]] = {
    "5m": (300, 3),
    "1h": (3600, 30),
    "6h": (21600, 180),
    "24h": (86400, 720),
    "30d": (2592000, 21600),
}
SAMPLE_EVERY = 10.0
KEEP_SNAPSHOTS = timedelta(days=60)
PEAK_WINDOW = timedelta(days=30)
MAX_USAGE_DAYS = 92
RESERVING = (Status.RUNNING, Status.STARTING)


@dataclass(frozen=True)
class Reserved:
    running: int
    vcpus: int
    memory_mb: int


def _now() -> datetime:
    return datetime.now(UTC)



def _point(ts: float, cpu_pct: float, mem_bytes: int, disk_bytes: int) -> MetricPoint:
    return MetricPoint(timestamp_unix=int(ts), cpu_pct=round(cpu_pct, 2), mem_bytes=mem_bytes, disk_bytes=disk_bytes)


class MetricsService:
    def __init__(self, sessionmaker: SessionMaker, pool: AgentPool, capsules: CapsuleService) -> None:
        self._sessionmaker = sessionmaker
        self._pool = pool
        self._capsules = capsules
        self._task: asyncio.Task[None] | None = None

    # --- one capsule -----------------------------------------------------------------------------------------

    async def capsule(self, principal: Principal, sandbox_id: uuid.UUID, range_name: MetricRange) -> CapsuleMetrics:
        points = await self._points(principal, sandbox_id, range_name)
        return CapsuleMetrics(sandbox_id=format_id(Kind.SANDBOX, sandbox_id), range=range_name, points=points)

    async def _points(self, principal: Principal, sandbox_id: uuid.UUID, range_name: MetricRange) -> list[MetricPoint]:
        row = await self._capsules.get(principal, sandbox_id)
        if row.status == Status.RUNNING:
            row, host = await self._capsules.running(principal, sandbox_id)
            answer = await self._pool.client(host).sandbox_metrics(format_id(Kind.SANDBOX, row.id), range_name)
            return [_point(p.timestamp_unix, p.cpu_pct, p.mem_bytes, p.disk_bytes) for p in answer.points]
        if row.status == Status.PAUSED:
            tier, seconds = METRIC_RANGES[range_name]
            since = _now() - timedelta(seconds=seconds)
            async with self._sessionmaker() as session:
                rows = await session.scalars(
                    select(SandboxMetricPoint)
                    .where(
                        SandboxMetricPoint.sandbox_id == sandbox_id,
                        SandboxMetricPoint.tier == tier,
                        SandboxMetricPoint.ts >= since,
                    )
                    .order_by(SandboxMetricPoint.ts)
                )
                return [_point(p.ts.timestamp(), p.cpu_pct, p.mem_bytes, p.disk_bytes) for p in rows]
        raise NotFound(f"metrics not available for sandbox in state: {row.status}")

    # --- team stats ------------------------------------------------------------------------------------------

    async def reserved(self, team_id: uuid.UUID | None = None) -> dict[uuid.UUID, Reserved]:
        """What each team holds now: running and starting capsules whole, paused ones half their memory."""
        query = select(Sandbox.team_id, Sandbox.status, Sandbox.vcpus, Sandbox.memory_mb).where(
            Sandbox.status.in_([*RESERVING, Status.PAUSED])
        )
        if team_id is not None:
            query = query.where(Sandbox.team_id == team_id)
        totals: dict[uuid.UUID, list[int]] = {}
        async with self._sessionmaker() as session:
            for team, status, vcpus, memory_mb in await session.execute(query):
                t = totals.setdefault(team, [0, 0, 0])
                if status == Status.PAUSED:
                    t[2] += math.ceil(memory_mb / 2)
                else:
                    t[0] += 1
                    t[1] += vcpus
                    t[2] += memory_mb
        return {team: Reserved(*t) for team, t in totals.items()}

    async def stats(self, principal: Principal, range_name: StatsRange) -> CapsuleStats:
        window, bucket = STATS_RANGES[range_name]
        now = _now()
        current = (await self.reserved(principal.team_id)).get(principal.team_id, Reserved(0, 0, 0))
        start = datetime.fromtimestamp((now.timestamp() - window) // bucket * bucket, UTC)
        count = math.ceil((now - start).total_seconds() / bucket)
        running, vcpus, memory = [0] * count, [0] * count, [0] * count
        async with self._sessionmaker() as session:
            samples = await session.execute(
                select(
                    SandboxMetricsSnapshot.sampled_at,
                    SandboxMetricsSnapshot.running_count,
                    SandboxMetricsSnapshot.vcpus_reserved,
                    SandboxMetricsSnapshot.memory_mb_reserved,
                ).where(SandboxMetricsSnapshot.team_id == principal.team_id, SandboxMetricsSnapshot.sampled_at >= start)
            )
            for sampled_at, r, v, m in samples:
                i = min(count - 1, int((sampled_at - start).total_seconds() // bucket))
                running[i], vcpus[i], memory[i] = max(running[i], r), max(vcpus[i], v), max(memory[i], m)
            peak = (
                await session.execute(
                    select(
                        func.max(SandboxMetricsSnapshot.running_count),
                        func.max(SandboxMetricsSnapshot.vcpus_reserved),
                        func.max(SandboxMetricsSnapshot.memory_mb_reserved),
                    ).where(
                        SandboxMetricsSnapshot.team_id == principal.team_id,
                        SandboxMetricsSnapshot.sampled_at >= now - PEAK_WINDOW,
                    )
                )
            ).one()
        # The newest bucket shows now, so a capsule started a moment ago is on the chart already.
        running[-1], vcpus[-1] = max(running[-1], current.running), max(vcpus[-1], current.vcpus)
        memory[-1] = max(memory[-1], current.memory_mb)
        labels = [(start + timedelta(seconds=i * bucket)).strftime("%Y-%m-%dT%H:%M:%SZ") for i in range(count)]
        return CapsuleStats(
            range=range_name,
            current=Current(
                running_count=current.running, vcpus_reserved=current.vcpus, memory_mb_reserved=current.memory_mb
            ),
            peaks=Peaks(
                running_count=max(peak[0] or 0, current.running),
                vcpus=max(peak[1] or 0, current.vcpus),
                memory_mb=max(int(peak[2] or 0), current.memory_mb),
            ),
            series=Series(labels=labels, running=running, vcpus=vcpus, memory_mb=memory),
        )

    # --- usage -----------------------------------------------------------------------------------------------

    async def usage(self, principal: Principal, first: date | None, last: date | None) -> Usage:
        today = _now().date()
        last = last or today
        first = first or last - timedelta(days=29)
        if first > last:
            raise InvalidRequest("'from' must not be after 'to'")
        if (last - first).days + 1 > MAX_USAGE_DAYS:
            raise InvalidRequest(f"the range spans more than {MAX_USAGE_DAYS} days")
        async with self._sessionmaker() as session:
            stored = {
                row.day: (row.cpu_minutes, row.ram_mb_minutes)
                for row in await session.scalars(
                    select(DailyUsage).where(
                        DailyUsage.team_id == principal.team_id, DailyUsage.day >= first, DailyUsage.day <= last
                    )
                )
            }
        missing = [d for d in _days(first, last) if d not in stored and d <= today]
        if missing:
            stored |= await self._rollup(principal.team_id, missing[0], missing[-1])
        points: list[UsagePoint] = []
        for day in _days(first, last):
            cpu, ram = stored.get(day, (0.0, 0.0))
            points.append(UsagePoint(date=day.isoformat(), cpu_minutes=round(cpu, 4), ram_mb_minutes=round(ram, 4)))
        return Usage(from_=first.isoformat(), to=last.isoformat(), points=points)

    async def _rollup(self, team_id: uuid.UUID | None, first: date, last: date) -> dict[date, tuple[float, float]]:
        """Usage per day from the 10 s samples: each sample stands for 10 s of what was reserved."""
        begin = datetime(first.year, first.month, first.day, tzinfo=UTC)
        end = datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)
        query = select(
            SandboxMetricsSnapshot.sampled_at,
            SandboxMetricsSnapshot.vcpus_reserved,
            SandboxMetricsSnapshot.memory_mb_reserved,
        ).where(SandboxMetricsSnapshot.sampled_at >= begin, SandboxMetricsSnapshot.sampled_at < end)
        if team_id is not None:
            query = query.where(SandboxMetricsSnapshot.team_id == team_id)
        out: dict[date, tuple[float, float]] = {}
        async with self._sessionmaker() as session:
            for sampled_at, vcpus, memory in await session.execute(query):
                day = sampled_at.date()
                cpu, ram = out.get(day, (0.0, 0.0))
                out[day] = (cpu + vcpus * SAMPLE_EVERY / 60, ram + memory * SAMPLE_EVERY / 60)
        return out

    async def store_finished_days(self) -> None:
        """Daily usage rows for finished days (kept after the samples they come from are pruned)."""
        today = _now().date()
        first = today - timedelta(days=KEEP_SNAPSHOTS.days)
        async with self._sessionmaker() as session:
            done = set(
                (await session.execute(select(DailyUsage.team_id, DailyUsage.day).where(DailyUsage.day >= first))).all()
            )
            teams = await session.scalars(
                select(SandboxMetricsSnapshot.team_id)
                .where(SandboxMetricsSnapshot.sampled_at < datetime(today.year, today.month, today.day, tzinfo=UTC))
                .distinct()
            )
            for team in list(teams):
                yesterday = today - timedelta(days=1)
                if (team, yesterday) in done:
                    continue
                for day, (cpu, ram) in (await self._rollup(team, first, yesterday)).items():
                    if (team, day) not in done:
                        session.add(DailyUsage(team_id=team, day=day, cpu_minutes=cpu, ram_mb_minutes=ram))
            await session.commit()

    # --- the sampler -----------------------------------------------------------------------------------------

    async def sample(self) -> None:
        now = _now()
        async with self._sessionmaker() as session:
            newest = await session.scalar(select(func.max(SandboxMetricsSnapshot.sampled_at)))
            if newest is not None and now - newest < timedelta(seconds=SAMPLE_EVERY * 0.8):
                return  # another control plane on this database sampled just now
            for team, r in (await self.reserved()).items():
                session.add(
                    SandboxMetricsSnapshot(
                        team_id=team,
                        sampled_at=now,
                        running_count=r.running,
                        vcpus_reserved=r.vcpus,
                        memory_mb_reserved=r.memory_mb,
                    )
                )
            await session.execute(
                delete(SandboxMetricsSnapshot).where(SandboxMetricsSnapshot.sampled_at < now - KEEP_SNAPSHOTS)
            )
            await session.commit()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="metrics-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        last_rollup: date | None = None
        while True:
            try:
                await self.sample()
                if last_rollup != _now().date():
                    await self.store_finished_days()
                    last_rollup = _now().date()
            except Exception:
                log.exception("metrics sampling failed")
            await asyncio.sleep(SAMPLE_EVERY)


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]
