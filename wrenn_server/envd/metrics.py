"""Guest resource usage: CPU from /proc/stat deltas, memory from /proc/meminfo, disk from statvfs('/')."""

from __future__ import annotations

import os
import time

from ..proto.envd import Metrics as Sample


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies since boot."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user/nice
    return total - idle, total


def _meminfo() -> dict[str, int]:
    values = {}
    with open("/proc/meminfo") as f:
        for line in f:
            name, _, rest = line.partition(":")
            values[name] = int(rest.split()[0]) * 1024
    return values


class Metrics:
    def __init__(self) -> None:
        self._last = _cpu_times()
        self._used_pct = 0.0

    def sample(self) -> Sample:
        busy, total = _cpu_times()
        if total > self._last[1]:  # two calls within one jiffy keep the previous figure
            self._used_pct = round(100.0 * (busy - self._last[0]) / (total - self._last[1]), 2)
            self._last = (busy, total)
        mem = _meminfo()
        disk = os.statvfs("/")
        return Sample(
            ts=int(time.time()),
            cpu_count=os.cpu_count() or 1,
            cpu_used_pct=self._used_pct,
            mem_total=mem["MemTotal"],
            mem_used=mem["MemTotal"] - mem.get("MemAvailable", mem.get("MemFree", 0)),
            disk_used=(disk.f_blocks - disk.f_bfree) * disk.f_frsize,
            disk_total=disk.f_blocks * disk.f_frsize,
        )
