"""Chaos: SIGKILL the platform mid-operation, start it again, and count what it lost or left behind.

Each scenario SIGKILLs one process — `wrenn up`, or on a split deployment (`wrenn control-plane` + `wrenn
agent`) the agent or the control plane alone — in the middle of an operation, starts it again and waits for
the capsules to settle:

- `create-burst`: concurrent creates, killed once the first is answered;
- `snapshot`: a snapshot of a capsule holding `--snapshot-mb` of files, killed once it is `snapshotting`;
- `pause`: a pause of a capsule with a resident process, killed before it is answered;
- `disk-fill`: a capsule with a 512 MiB disk writing past its size, killed mid-write (the write is bounded
  to 768 MiB, and the run aborts if the host's free space falls under 5 GiB).

Every capsule a create answered before a kill is tracked to the end: after every restart it must be `running`
or `paused` (resumed to check) with every file it wrote (sha256). After the last scenario the platform is
stopped cleanly and the machine searched for what no capsule holds: runsc sandboxes and QEMU processes,
mounts under the data directory, network slots and their namespaces, loop devices backed by its files.
Prints JSON with counts and details; exit status 1 when anything was lost, stuck or leaked.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.cleanup import purge_data_dir

from .common import RESIDENT, emit
from .deployments import Deployment, Split, Up, leaks

SCENARIOS = ("create-burst", "snapshot", "pause", "disk-fill")
TRANSITIONAL = {"pending", "starting", "pausing", "resuming", "snapshotting", "stopping"}
LIVE = {"running", "paused"}
HOST_RESERVE = 5 << 30  # never let the host's free space fall under this
FILL_DISK_MB = 512
FILL_WRITE_MB = 768  # past the disk's size, bounded whatever the runtime enforces
FOLDER = "/root/chaos"
# Settling faster than the defaults: the reconciler every 2 s, the agent beating every second.
FAST_SETTLE = {"WRENN_RECONCILE_INTERVAL_SEC": "2", "WRENN_HEARTBEAT_SEC": "1"}


class Aborted(Exception):
    """The host's free space fell under HOST_RESERVE: the run stops."""


def host_free(path: Path) -> int:
    return shutil.disk_usage(path).free


def sh(http: httpx.Client, capsule_id: str, script: str, timeout: float = 60) -> dict[str, Any]:
    resp = http.post(
        f"/v1/capsules/{capsule_id}/exec",
        json={"cmd": "/bin/sh", "args": ["-c", script], "timeout_sec": timeout},
        timeout=timeout + 15,
    )
    resp.raise_for_status()
    answer: dict[str, Any] = resp.json()
    return answer


def create(http: httpx.Client, **body: Any) -> str:
    resp = http.post("/v1/capsules", json={"memory_mb": 256, "timeout_sec": 0, **body}, timeout=120)
    resp.raise_for_status()
    return str(resp.json()["id"])


def write_files(http: httpx.Client, capsule_id: str, count: int, size_kb: int) -> dict[str, str]:
    """`count` files of random bytes in FOLDER; answers name → sha256 as the capsule computed it."""
    script = (
        f"mkdir -p {FOLDER} && cd {FOLDER} && for i in $(seq {count}); do "
        f"head -c {size_kb * 1024} /dev/urandom > f-$$-$i; done && sha256sum f-$$-*"
    )
    ran = sh(http, capsule_id, script, timeout=300)
    if ran["exit_code"] != 0:
        raise RuntimeError(f"writing files failed: {ran['stderr'][-500:]}")
    return {name: digest for digest, name in (line.split("  ", 1) for line in ran["stdout"].splitlines())}


@dataclass
class Tracker:
    """Capsules a create answered, with the files each wrote: what must outlive every kill."""

    files: dict[str, dict[str, str]] = field(default_factory=dict)
    residents: set[str] = field(default_factory=set)  # capsules whose resident process must go on counting

    def check(self, http: httpx.Client) -> list[str]:
        """What is lost: a capsule not `running`/`paused`, one that does not resume, a file missing or changed."""
        lost = []
        for capsule_id, expected in self.files.items():
            row = http.get(f"/v1/capsules/{capsule_id}").json()
            status = row.get("status")
            if status not in LIVE:
                reason = (row.get("metadata") or {}).get("end_reason", "")
                lost.append(f"{capsule_id}: {status}" + (f" ({reason[:300]})" if reason else ""))
                continue
            if status == "paused":
                resumed = http.post(f"/v1/capsules/{capsule_id}/resume", timeout=120)
                if resumed.status_code != 200:
                    lost.append(f"{capsule_id}: paused, and its resume answered {resumed.status_code} {resumed.text}")
                    continue
            try:
                lost += self._check_inside(http, capsule_id, expected)
            except httpx.HTTPError as exc:
                lost.append(f"{capsule_id}: it could not be read: {exc}")
        return lost

    def _check_inside(self, http: httpx.Client, capsule_id: str, expected: dict[str, str]) -> list[str]:
        lost = []
        if expected:
            found = sh(http, capsule_id, f"cd {FOLDER} && sha256sum {' '.join(expected)}", timeout=120)
            digests = dict(reversed(line.split("  ", 1)) for line in found["stdout"].splitlines())
            lost += [f"{capsule_id}: {name}" for name, digest in expected.items() if digests.get(name) != digest]
        if capsule_id in self.residents:
            counted = sh(http, capsule_id, "cat /root/.resident; sleep 0.5; cat /root/.resident")["stdout"].split()
            if len(counted) != 2 or counted[0] == counted[1]:
                lost.append(f"{capsule_id}: its resident process stopped counting ({counted})")
        return lost


def settle(http: httpx.Client, seconds: float) -> list[str]:
    """Wait until no capsule of the team is in a transitional state; answers those still in one."""
    deadline = time.monotonic() + seconds
    while True:
        stuck = [f"{c['id']}: {c['status']}" for c in http.get("/v1/capsules").json() if c["status"] in TRANSITIONAL]
        if not stuck or time.monotonic() > deadline:
            return stuck
        time.sleep(1)


def until_status(http: httpx.Client, capsule_id: str, wanted: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if http.get(f"/v1/capsules/{capsule_id}").json().get("status") == wanted:
            return True
        time.sleep(0.02)
    return False


class Request(threading.Thread):
    """One API call in a thread of its own, to kill the platform while it is in flight."""

    def __init__(self, call: Callable[[], httpx.Response]) -> None:
        super().__init__(daemon=True)
        self.call = call
        self.answer: httpx.Response | None = None
        self.failure = ""
        self.start()

    def run(self) -> None:
        try:
            self.answer = self.call()
        except Exception as exc:  # noqa: BLE001 - what the call met is the answer reported
            self.failure = f"{type(exc).__name__}: {exc}"

    def answered(self) -> str:
        return self.failure or (f"{self.answer.status_code}" if self.answer is not None else "no answer yet")


@dataclass
class Options:
    burst: int = 4
    snapshot_mb: int = 256
    settle_sec: float = 90


def create_burst(deploy: Deployment, part: str, tracker: Tracker, options: Options) -> dict[str, Any]:
    """`burst` creates at once, each writing a file once answered; the kill lands when the first has both.
    Those created (and their files written) before the kill are tracked."""
    created: dict[str, dict[str, str]] = {}
    killed = threading.Event()

    def one() -> httpx.Response:
        with deploy.client() as http:
            resp = http.post("/v1/capsules", json={"memory_mb": 256, "timeout_sec": 0}, timeout=120)
            if resp.status_code == 201 and not killed.is_set():
                capsule_id = resp.json()["id"]
                try:
                    files = write_files(http, capsule_id, 1, 64)
                except (httpx.HTTPError, RuntimeError):
                    return resp  # cut by the kill: created, but not tracked
                if not killed.is_set():
                    created[capsule_id] = files
        return resp

    calls = [Request(one) for _ in range(options.burst)]
    while not created and any(call.is_alive() for call in calls):
        time.sleep(0.01)
    killed.set()
    accepted = dict(created)
    deploy.kill(part)
    for call in calls:
        call.join()
    deploy.start(part)
    tracker.files.update(accepted)
    return {"accepted_before_kill": len(accepted), "answers": [c.answered() for c in calls]}


def snapshot(deploy: Deployment, part: str, tracker: Tracker, options: Options) -> dict[str, Any]:
    """A snapshot of a capsule holding `snapshot_mb` MiB of files, killed once the capsule is `snapshotting`."""
    with deploy.client() as http:
        capsule_id = create(http, memory_mb=512)
        tracker.files[capsule_id] = write_files(http, capsule_id, max(1, options.snapshot_mb // 8), 8192)
        call = Request(lambda: http.post("/v1/snapshots", json={"sandbox_id": capsule_id}, timeout=300))
        seen = until_status(http, capsule_id, "snapshotting", 30)
        time.sleep(0.3)
        landed = call.answer is None and not call.failure
        deploy.kill(part)
        call.join()
        deploy.start(part)
    return {"capsule": capsule_id, "snapshotting_seen": seen, "killed_before_the_answer": landed}


def pause(deploy: Deployment, part: str, tracker: Tracker, options: Options) -> dict[str, Any]:
    """A pause of a capsule with a resident process and files, killed before it is answered."""
    with deploy.client() as http:
        capsule_id = create(http)
        tracker.files[capsule_id] = write_files(http, capsule_id, 16, 256)
        sh(http, capsule_id, f"nohup sh -c '{RESIDENT}' >/dev/null 2>&1 &")
        tracker.residents.add(capsule_id)
        call = Request(lambda: http.post(f"/v1/capsules/{capsule_id}/pause", timeout=120))
        seen = until_status(http, capsule_id, "pausing", 5)
        landed = call.answer is None and not call.failure
        deploy.kill(part)
        call.join()
        deploy.start(part)
    return {"capsule": capsule_id, "pausing_seen": seen, "killed_before_the_answer": landed}


def disk_fill(deploy: Deployment, part: str, tracker: Tracker, options: Options) -> dict[str, Any]:
    """A capsule with a 512 MiB disk writing 768 MiB, killed mid-write."""
    if host_free(deploy.data_dir) < HOST_RESERVE + (FILL_WRITE_MB << 20) * 2:
        raise Aborted(f"the host has {host_free(deploy.data_dir) >> 20} MiB free: not enough to fill a disk")
    with deploy.client() as http:
        capsule_id = create(http, disk_size_mb=FILL_DISK_MB)
        tracker.files[capsule_id] = write_files(http, capsule_id, 4, 256)
        fill = f"dd if=/dev/zero of={FOLDER}/fill bs=1M count={FILL_WRITE_MB} 2>/root/fill.err; echo $? > /root/fill.rc"
        sh(http, capsule_id, f"nohup sh -c '{fill}' >/dev/null 2>&1 &")
        deadline = time.monotonic() + 60
        written = 0
        while written < (64 << 20) and time.monotonic() < deadline:
            out = sh(http, capsule_id, f"stat -c %s {FOLDER}/fill 2>/dev/null || echo 0")["stdout"].strip()
            written = int(out or 0)
            if host_free(deploy.data_dir) < HOST_RESERVE:
                http.delete(f"/v1/capsules/{capsule_id}")
                raise Aborted("the host's free space fell under 5 GiB during the fill")
            time.sleep(0.05)
        deploy.kill(part)
        deploy.start(part)
        # What the write came to: ENOSPC at the disk's size, or (no limit enforced) all of it.
        time.sleep(2)
        status = http.get(f"/v1/capsules/{capsule_id}").json()["status"]
        outcome: dict[str, Any] = {"capsule": capsule_id, "written_at_kill_mb": written >> 20}
        if status == "running":
            ended = sh(
                http, capsule_id, f"sleep 5; stat -c %s {FOLDER}/fill; cat /root/fill.rc /root/fill.err 2>/dev/null"
            )
            lines = ended["stdout"].splitlines()
            outcome["fill_file_mb"] = int(lines[0]) >> 20 if lines and lines[0].isdigit() else None
            outcome["dd_said"] = " ".join(lines[1:])[-300:]
            outcome["disk_limit_held"] = outcome["fill_file_mb"] is not None and outcome["fill_file_mb"] <= FILL_DISK_MB
            sh(http, capsule_id, f"rm -f {FOLDER}/fill")  # the space back for the rest of the run
    return outcome


RUNS: dict[str, Callable[[Deployment, str, Tracker, Options], dict[str, Any]]] = {
    "create-burst": create_burst,
    "snapshot": snapshot,
    "pause": pause,
    "disk-fill": disk_fill,
}


def run(kind: str, plan: list[tuple[str, str]], options: Options, runtime: str) -> dict[str, Any]:
    """Run `plan` (scenario, part to kill) on one deployment; answers the JSON report."""
    root = Path(tempfile.mkdtemp(prefix="wrenn-chaos-", dir="/var/tmp"))
    env = {"WRENN_RUNTIME": runtime, **FAST_SETTLE}
    deploy: Deployment = Up(root, env) if kind == "up" else Split(root, env)
    tracker = Tracker()
    report: dict[str, Any] = {"deployment": kind, "runtime": runtime, "settle_sec": options.settle_sec, "kills": []}
    try:
        deploy.start()
        for scenario, part in plan:
            entry: dict[str, Any] = {"scenario": scenario, "killed": part}
            report["kills"].append(entry)
            start = time.monotonic()
            try:
                entry.update(RUNS[scenario](deploy, part, tracker, options))
            except Aborted as exc:
                entry["aborted"] = str(exc)
                break
            except Exception as exc:  # noqa: BLE001 - a scenario that failed is reported, not hidden
                entry["failed"] = f"{type(exc).__name__}: {exc}"
                entry["log"] = deploy.log_tail()
                for name in deploy.parts:  # whatever the failure left stopped is started again
                    if isinstance(deploy, Split) and name not in deploy.processes:
                        deploy.start(name)
                    if isinstance(deploy, Up) and deploy.stack.process is None:
                        deploy.start()
            with deploy.client() as http:
                entry["stuck"] = settle(http, options.settle_sec)
                entry["lost"] = tracker.check(http)
            entry["seconds"] = round(time.monotonic() - start, 1)
        with deploy.client() as http:
            capsules = http.get("/v1/capsules").json()
        holding = {c["id"] for c in capsules}  # every row not ended holds its guest, whatever its state
        report["capsules"] = {c["id"]: c["status"] for c in capsules}
        deploy.stop()
        report["leaks"] = leaks(deploy.data_dir, holding)
        if any(report["leaks"].values()):
            report["log"] = deploy.log_tail()
    finally:
        deploy.stop()
        for path in [root / "agent", root] if kind == "split" else [root]:
            purge_data_dir(path)
    kills = report["kills"]
    report["totals"] = {
        "lost": len({loss for k in kills for loss in k.get("lost", [])}),
        "stuck": len({capsule for k in kills for capsule in k.get("stuck", [])}),
        "leaked": sum(len(found) for found in report.get("leaks", {}).values()),
        "failed_scenarios": sum(1 for k in kills if "failed" in k or "aborted" in k),
    }
    return report


def plan_for(kind: str, scenarios: list[str]) -> list[tuple[str, str]]:
    """Each scenario once per process a kill can take: `wrenn up`, or the agent and the control plane."""
    parts = ["up"] if kind == "up" else ["agent", "control-plane"]
    return [(scenario, part) for scenario in scenarios for part in parts]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--deployment", choices=["up", "split", "both"], default="both")
    parser.add_argument("--scenarios", nargs="*", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--burst", type=int, default=8, help="creates in the burst (default 8)")
    parser.add_argument("--snapshot-mb", type=int, default=256, help="files in the snapshotted capsule (MiB)")
    parser.add_argument("--settle-sec", type=float, default=90, help="how long a transitional state may last")
    parser.add_argument("--runtime", default=os.environ.get("WRENN_RUNTIME", "gvisor"), help="gvisor or microvm")
    args = parser.parse_args()
    if host_free(Path("/var/tmp")) < HOST_RESERVE + (2 << 30):
        sys.exit("the host has less than 7 GiB free: not running chaos here")
    options = Options(args.burst, args.snapshot_mb, args.settle_sec)
    kinds = ["up", "split"] if args.deployment == "both" else [args.deployment]
    reports = [run(kind, plan_for(kind, args.scenarios), options, args.runtime) for kind in kinds]
    emit({"chaos": reports})
    return 1 if any(any(r["totals"].values()) for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
