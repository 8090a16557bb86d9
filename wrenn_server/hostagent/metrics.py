"""Per-capsule resource samples in three ring tiers (10 min at 500 ms, 2 h at 30 s, 24 h at 5 min).

Coarser tiers hold averages of the finer ones, so a capsule's last day costs a fixed ~1,700 points of memory.
The control plane reads a tier for a time range, and flushes all tiers to its database when a capsule pauses or
is destroyed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .runtimes.base import Usage

log = logging.getLogger(__name__)

SAMPLE_SEC = 0.5
DISK_EVERY = 20  # disk usage walks the capsule's files: every 10 s is plenty
TIER_10M, TIER_2H, TIER_24H = "10m", "2h", "24h"
_CAPACITY = {TIER_10M: 1200, TIER_2H: 240, TIER_24H: 288}
_FOLD = {TIER_2H: 60, TIER_24H: 10}  # how many points of the finer tier make one point here
RANGES = {
    "5m": (TIER_10M, 300),
    "10m": (TIER_10M, 600),
    "1h": (TIER_2H, 3600),
    "2h": (TIER_2H, 7200),
    "6h": (TIER_24H, 6 * 3600),
    "12h": (TIER_24H, 12 * 3600),
    "24h": (TIER_24H, 24 * 3600),
}


@dataclass(frozen=True)
class Point:
    ts: float
    cpu_pct: float
    mem_bytes: int
    disk_bytes: int


def _average(points: list[Point]) -> Point:
    n = len(points)
    return Point(
        points[-1].ts,
        sum(p.cpu_pct for p in points) / n,
        sum(p.mem_bytes for p in points) // n,
        sum(p.disk_bytes for p in points) // n,
    )


class Rings:
    def __init__(self) -> None:
        self.tiers: dict[str, deque[Point]] = {name: deque(maxlen=cap) for name, cap in _CAPACITY.items()}
        self._pending: dict[str, list[Point]] = {TIER_2H: [], TIER_24H: []}

    def add(self, point: Point) -> None:
        self.tiers[TIER_10M].append(point)
        self._fold(TIER_2H, point)

    def _fold(self, tier: str, point: Point) -> None:
        pending = self._pending[tier]
        pending.append(point)
        if len(pending) < _FOLD[tier]:
            return
        folded = _average(pending)
        pending.clear()
        self.tiers[tier].append(folded)
        if tier == TIER_2H:
            self._fold(TIER_24H, folded)

    def read(self, range_name: str, now: float) -> list[Point]:
        tier, span = RANGES[range_name]
        return [p for p in self.tiers[tier] if p.ts >= now - span]

    def drain(self) -> dict[str, list[Point]]:
        out = {name: list(points) for name, points in self.tiers.items()}
        for points in self.tiers.values():
            points.clear()
        return out


class Sampler:
    """Samples every running capsule twice a second."""

    def __init__(
        self,
        usage: Callable[[str], Awaitable[Usage | None]],
        capsules: Callable[[], dict[str, int]],
        disk_used: Callable[[str], int],
    ) -> None:
        self._usage = usage
        self._capsules = capsules  # sandbox id -> vcpus, for the ones running now
        self._disk_used = disk_used
        self.rings: dict[str, Rings] = {}
        self._last_cpu: dict[str, tuple[float, float]] = {}
        self._disk: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._ticks = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def forget(self, sandbox_id: str) -> dict[str, list[Point]]:
        self._last_cpu.pop(sandbox_id, None)
        self._disk.pop(sandbox_id, None)
        rings = self.rings.pop(sandbox_id, None)
        return rings.drain() if rings else {}

    async def _loop(self) -> None:
        while True:
            try:
                await self.sample_all()
            except Exception:
                log.exception("metrics sampling failed")
            await asyncio.sleep(SAMPLE_SEC)

    async def sample_all(self) -> None:
        now_wall, now = time.time(), time.monotonic()
        refresh_disk = self._ticks % DISK_EVERY == 0
        self._ticks += 1
        for sandbox_id, vcpus in self._capsules().items():
            usage = await self._usage(sandbox_id)
            if usage is None:
                continue
            previous = self._last_cpu.get(sandbox_id)
            self._last_cpu[sandbox_id] = (now, usage.cpu_seconds)
            if previous is None:
                continue
            elapsed = max(now - previous[0], 1e-6)
            cpu = (usage.cpu_seconds - previous[1]) / (elapsed * max(vcpus, 1)) * 100
            if refresh_disk or sandbox_id not in self._disk:
                self._disk[sandbox_id] = await asyncio.to_thread(self._disk_used, sandbox_id)
            point = Point(now_wall, round(min(max(cpu, 0.0), 100.0), 2), usage.memory_bytes, self._disk[sandbox_id])
            self.rings.setdefault(sandbox_id, Rings()).add(point)
