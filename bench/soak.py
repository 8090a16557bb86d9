"""Soak: what must hold however long a capsule lives, measured through the SDK against `wrenn up`.

- `--cycles` pause/resume cycles (default 1,000) of one capsule with a resident process, each writing a
  checksummed file; every 10th resume waits until the capsule is checkpointed (a restore, not a thaw).
- `--ttl-pauses` inactivity pauses (default 3) of a capsule created with the shortest `timeout_sec`, each
  resumed by `Capsule.connect`, run beside the cycles.
- `--generations` snapshot generations (default 10): a capsule made from the previous generation's snapshot
  writes its own file and is snapshotted in turn.

Prints JSON: the losses (files missing or changed, a resident process that stopped counting; all must be 0),
pause/resume p50/p99, and the details of anything lost. Exit status 1 when something was lost.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from wrenn import Capsule
from wrenn.models import Status

from .common import emit, lost_files, ms_since, platform, resident_problem, start_resident, tail_summary

FOLDER = "/root/soak"
TTL_SEC = 60  # the shortest inactivity TTL the API accepts
COLD_EVERY = 10


@dataclass
class Losses:
    """What a part of the soak lost; each entry names the cycle, round or generation."""

    files: list[str] = field(default_factory=list)
    resident: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def count(self) -> int:
        return len(self.files) + len(self.resident) + len(self.errors)

    def report(self) -> dict[str, Any]:
        return {"lost": self.count(), "files": self.files, "resident": self.resident, "errors": self.errors}


def write_file(capsule: Capsule, name: str, expected: dict[str, str]) -> None:
    """A file of random bytes in FOLDER, its checksum kept in `expected`."""
    data = os.urandom(4096)
    capsule.files.write(f"{FOLDER}/{name}", data)
    expected[name] = hashlib.sha256(data).hexdigest()


def verify(capsule: Capsule, expected: dict[str, str], pid: int, where: str, losses: Losses) -> None:
    losses.files += [f"{where}: {name}" for name in lost_files(capsule, FOLDER, expected)]
    if problem := resident_problem(capsule, pid):
        losses.resident.append(f"{where}: {problem}")


def cycles(n: int, checkpoint_wait: float) -> dict[str, Any]:
    """n pause/resume cycles of one capsule, each writing a file and checking it after the resume; all
    files and the resident process checked every 100 cycles and at the end."""
    losses, expected = Losses(), dict[str, str]()
    pause_ms: list[float] = []
    thaw_ms: list[float] = []
    restore_ms: list[float] = []
    with Capsule(timeout=0) as capsule:
        capsule.files.make_dir(FOLDER)
        pid = start_resident(capsule)
        for i in range(n):
            name = f"cycle-{i:05d}.bin"
            try:
                write_file(capsule, name, expected)
                start = time.perf_counter()
                capsule.pause()
                pause_ms.append(ms_since(start))
                cold = i % COLD_EVERY == COLD_EVERY - 1
                if cold:
                    time.sleep(checkpoint_wait)
                start = time.perf_counter()
                capsule.resume()
                (restore_ms if cold else thaw_ms).append(ms_since(start))
                losses.files += [f"cycle {i}: {f}" for f in lost_files(capsule, FOLDER, {name: expected[name]})]
                if i % 100 == 99 or i == n - 1:
                    verify(capsule, expected, pid, f"cycle {i}", losses)
                    print(f"soak: {i + 1}/{n} cycles, {losses.count()} lost", file=sys.stderr, flush=True)
            except Exception as exc:  # noqa: BLE001 - a failed cycle is reported, the soak goes on
                losses.errors.append(f"cycle {i}: {type(exc).__name__}: {exc}")
                if len(losses.errors) >= 10:
                    losses.errors.append("stopped after 10 failed cycles")
                    break
    return {
        "cycles": n,
        "files_written": len(expected),
        "pause": tail_summary(pause_ms),
        "resume_recently_paused": tail_summary(thaw_ms),
        "resume_from_checkpoint": tail_summary(restore_ms),
        **losses.report(),
    }


def ttl_pauses(rounds: int, out: dict[str, Any]) -> None:
    """A capsule with the shortest TTL, left idle until it is paused for inactivity, then resumed by
    `Capsule.connect`: its files and resident process must be there after every round."""
    losses, expected = Losses(), dict[str, str]()
    waited: list[float] = []
    capsule = Capsule(timeout=TTL_SEC)
    try:
        capsule.files.make_dir(FOLDER)
        pid = start_resident(capsule)
        for i in range(rounds):
            write_file(capsule, f"ttl-{i}.bin", expected)
            start = time.monotonic()
            deadline = start + TTL_SEC * 3
            while (status := capsule.get_info().status) != Status.paused and time.monotonic() < deadline:
                time.sleep(1)
            if status != Status.paused:
                losses.errors.append(f"round {i}: not paused {TTL_SEC * 3} s after its last activity ({status})")
                break
            waited.append(time.monotonic() - start)
            capsule._client.close()
            capsule = Capsule.connect(capsule.capsule_id)
            verify(capsule, expected, pid, f"round {i}", losses)
    except Exception as exc:  # noqa: BLE001 - reported in the JSON
        losses.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        capsule.destroy()
        capsule._client.close()
    out.update(
        rounds=rounds,
        timeout_sec=TTL_SEC,
        seconds_until_paused=[round(s, 1) for s in waited],
        **losses.report(),
    )


def generations(n: int) -> dict[str, Any]:
    """n generations: each a capsule made from the previous generation's snapshot, checked for every file
    the generations before it wrote, writing its own and snapshotted in turn."""
    losses, expected = Losses(), dict[str, str]()
    snapshot_ms: list[float] = []
    templates: list[str] = []
    capsule = Capsule(timeout=0)
    try:
        capsule.files.make_dir(FOLDER)
        pid = start_resident(capsule)
        for generation in range(n):
            write_file(capsule, f"generation-{generation}.bin", expected)
            start = time.perf_counter()
            templates.append(str(capsule.create_snapshot().name))
            snapshot_ms.append(ms_since(start))
            child = Capsule(template=templates[-1], timeout=0)
            capsule.destroy()
            capsule._client.close()
            capsule = child
            losses.files += [f"generation {generation + 1}: {f}" for f in lost_files(capsule, FOLDER, expected)]
            # A snapshot holds the memory too: the resident process goes on counting in the new capsule.
            if problem := resident_problem(capsule, pid):
                losses.resident.append(f"generation {generation + 1}: {problem}")
    except Exception as exc:  # noqa: BLE001 - reported in the JSON
        losses.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        capsule.destroy()
        for name in templates:
            capsule._client.snapshots.delete(name)
        capsule._client.close()
    return {"generations": n, "snapshot": tail_summary(snapshot_ms), **losses.report()}


def measure(n: int = 1000, ttl_rounds: int = 3, generation_count: int = 10, runtime: str = "gvisor") -> dict[str, Any]:
    checkpoint_after = 0.5
    env = {
        "WRENN_RUNTIME": runtime,
        "WRENN_CHECKPOINT_AFTER_SEC": str(checkpoint_after),
        "WRENN_RECONCILE_INTERVAL_SEC": "1",  # an inactivity pause is in the API within a second
    }
    with platform(**env):
        ttl: dict[str, Any] = {}
        watcher = threading.Thread(target=ttl_pauses, args=(ttl_rounds, ttl), daemon=True)
        if ttl_rounds:
            watcher.start()
        result = {"pause_resume": cycles(n, checkpoint_after + 1.0), "generations": generations(generation_count)}
        if ttl_rounds:
            watcher.join()
        result["ttl_pauses"] = ttl
    lost = sum(part.get("lost", 0) for part in result.values())
    return {"soak": {"runtime": runtime, "lost": lost, **result, "target": "lost 0"}}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=1000, help="pause/resume cycles (default 1000)")
    parser.add_argument("--ttl-pauses", type=int, default=3, help=f"inactivity pauses ({TTL_SEC} s each; default 3)")
    parser.add_argument("--generations", type=int, default=10, help="snapshot generations (default 10)")
    parser.add_argument("--runtime", default=os.environ.get("WRENN_RUNTIME", "gvisor"), help="gvisor or microvm")
    args = parser.parse_args()
    result = measure(args.cycles, args.ttl_pauses, args.generations, args.runtime)
    emit(result)
    return 1 if result["soak"]["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
