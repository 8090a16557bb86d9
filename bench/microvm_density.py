"""How many idle microVM capsules this machine carries: with 1, 2, 4, ... capsules running (idle, envd up),
the host CPU they use, an exec round trip in one of them, and the control plane's answer to a list (does the
host stay responsive?). `python -m bench.microvm_density`."""

from __future__ import annotations

import os
import time
from typing import Any

from wrenn import Capsule

from .common import emit, platform, summary
from .pause_latency import _ms


def _cpu_busy(seconds: float) -> float:
    """Share of all the host's CPUs that was busy over the next `seconds` (0..1)."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def measure(counts: tuple[int, ...] = (1, 2, 4, 6, 8)) -> dict[str, Any]:
    rows, loaded = [], []
    with platform(WRENN_RUNTIME="microvm") as _stack:
        boxes: list[Capsule] = []
        try:
            for count in counts:
                while len(boxes) < count:
                    boxes.append(Capsule())
                time.sleep(5)  # settled: the pool refilled, the new guests idle
                busy = _cpu_busy(5)
                execs, lists = [], []
                for _ in range(10):
                    start = time.perf_counter()
                    boxes[0].commands.run("true")
                    execs.append(_ms(start))
                    start = time.perf_counter()
                    boxes[0]._client.capsules.list()
                    lists.append(_ms(start))
                rows.append(
                    {
                        "capsules": count,
                        "host_cpu_busy_pct": round(100 * busy, 1),
                        "exec_round_trip": summary(execs),
                        "control_plane_list": summary(lists),
                    }
                )
            # Then some of them busy (a shell spinning on a vCPU): is the host still answering, and the others?
            for count in (1, 2, 4, 7):
                for box in boxes[1 : count + 1]:
                    if not box.commands.list():
                        box.commands.run("while :; do :; done", background=True)
                time.sleep(3)
                busy = _cpu_busy(3)
                execs, lists = [], []
                for _ in range(10):
                    start = time.perf_counter()
                    boxes[0].commands.run("true")
                    execs.append(_ms(start))
                    start = time.perf_counter()
                    boxes[0]._client.capsules.list()
                    lists.append(_ms(start))
                loaded.append(
                    {
                        "busy_capsules": count,
                        "host_cpu_busy_pct": round(100 * busy, 1),
                        "exec_round_trip_in_an_idle_one": summary(execs),
                        "control_plane_list": summary(lists),
                    }
                )
        finally:
            for box in boxes:
                box.destroy()
    return {"microvm_density": {"host_cpus": os.cpu_count(), "idle_capsules": rows, "busy_capsules": loaded}}


if __name__ == "__main__":
    emit(measure())
