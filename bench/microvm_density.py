"""How many idle microVM capsules this machine carries: with 1, 2, 4, ... capsules running (idle, envd up),
the host CPU they use, an exec round trip in one of them, and the control plane's answer to a list (does the
host stay responsive?). `python -m bench.microvm_density`."""

from __future__ import annotations

import os
import time
from typing import Any

from wrenn import Capsule

from .common import emit, ms_since, platform, summary


def _cpu_busy(seconds: float) -> float:
    """Share of all the host's CPUs that was busy over the next `seconds` (0..1)."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def _host_and_capsule(box: Capsule, settle: float) -> dict[str, Any]:
    """After `settle` s: the host's CPU use, an exec round trip in `box` and the control plane's list."""
    time.sleep(settle)
    busy = _cpu_busy(settle)
    execs, lists = [], []
    for _ in range(10):
        start = time.perf_counter()
        box.commands.run("true")
        execs.append(ms_since(start))
        start = time.perf_counter()
        box._client.capsules.list()
        lists.append(ms_since(start))
    return {
        "host_cpu_busy_pct": round(100 * busy, 1),
        "exec_round_trip": summary(execs),
        "control_plane_list": summary(lists),
    }


def measure(counts: tuple[int, ...] = (1, 2, 4, 6, 8)) -> dict[str, Any]:
    idle, loaded = [], []
    with platform(WRENN_RUNTIME="microvm"):
        boxes: list[Capsule] = []
        try:
            for count in counts:
                while len(boxes) < count:
                    boxes.append(Capsule())
                idle.append({"capsules": count, **_host_and_capsule(boxes[0], 5)})  # the pool refilled meanwhile
            # Then some of them busy (a shell spinning on a vCPU): is the host still answering, and the others?
            for count in (1, 2, 4, 7):
                for box in boxes[1 : count + 1]:
                    if not box.commands.list():
                        box.commands.run("while :; do :; done", background=True)
                loaded.append({"busy_capsules": count, "exec_in_an_idle_one": True, **_host_and_capsule(boxes[0], 3)})
        finally:
            for box in boxes:
                box.destroy()
    return {"microvm_density": {"host_cpus": os.cpu_count(), "idle_capsules": idle, "busy_capsules": loaded}}


if __name__ == "__main__":
    emit(measure())
