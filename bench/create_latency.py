"""Create → running through the SDK, beside the raw runtime starting the same guest.

Three ways a capsule comes up: a warm guest from the pool (hit), a restore of the template's prepared
checkpoint (miss: pool off), and the raw runtime doing each by hand with the same template, bundle and network,
prepared outside the timed part: `runsc restore` of that checkpoint, and `runsc run` (a boot) until envd
answers. The difference is what the platform adds (scheduling, database, namespaces, overlay, envd init).

And what a gVisor capsule's own disk (a loop-mounted ext4 of its `disk_size_mb`) adds to a create: a spare
made ahead taken (what creates do), beside one made at the create (the first create of a size on a host).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from wrenn import Capsule, WrennClient

from wrenn_server.hostagent.layout import DataDir
from wrenn_server.hostagent.runtimes.loopdisk import LoopDisks

from .common import RawSandbox, emit, platform, prepared_checkpoint, raw_network, samples, summary

POOL_REFILL_WAIT = 2.0  # a refill restores one guest: well under this


def _wait_envd(address: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{address}:49983/health", timeout=0.5):
                return
        except OSError:
            time.sleep(0.002)
    raise TimeoutError("envd did not answer")


def _creates(n: int, pause: float) -> dict[str, Any]:
    """`n` creates each way: `Capsule()` as a user writes it (it builds a new HTTP client, ~20 ms of the SDK's
    own), and `capsules.create` on one kept client (what the platform itself takes)."""
    client = WrennClient()
    out: dict[str, list[float]] = {"sdk_capsule": [], "sdk_client_create": []}
    starts: set[str] = set()
    for i in range(2 * n):
        time.sleep(pause)
        start = time.perf_counter()
        if i % 2:
            info = client.capsules.create()
            out["sdk_client_create"].append((time.perf_counter() - start) * 1000)
            capsule_id = info.id
        else:
            capsule = Capsule()
            out["sdk_capsule"].append((time.perf_counter() - start) * 1000)
            capsule_id = capsule.capsule_id
            capsule._client.close()
        got = client.capsules.get(capsule_id)
        assert got.status.value == "running"
        starts.add(str((got.metadata or {}).get("start")))
        client.capsules.destroy(capsule_id)
    client.close()
    return {**{name: summary(samples) for name, samples in out.items()}, "started_by": sorted(starts)}


def _until_envd(raw: RawSandbox, what: str) -> None:
    """Until the raw sandbox's envd answers; if it never does, the error carries runsc's log of it."""
    try:
        _wait_envd(raw.slot.host_ip, time.monotonic() + 30)
    except TimeoutError:
        log = raw.workdir / "console.log"
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
        raise TimeoutError(f"envd of the raw sandbox ({what}) did not answer at {raw.slot.host_ip}:\n{tail}") from None


def raw_runs(root: Path, n: int, prepared: Path) -> dict[str, list[float]]:
    network = raw_network(root)
    out: dict[str, list[float]] = {"run": [], "restore": []}
    for _ in range(n):
        raw = RawSandbox.prepare(root, network)
        try:
            start = time.perf_counter()
            raw.run()
            _until_envd(raw, "runsc run")
            out["run"].append((time.perf_counter() - start) * 1000)
        finally:
            raw.remove()
        raw = RawSandbox.prepare(root, network, prepared)
        try:
            raw.readdress()
            start = time.perf_counter()
            raw.restore(prepared / "checkpoint")
            _until_envd(raw, f"runsc restore of {prepared}")
            out["restore"].append((time.perf_counter() - start) * 1000)
        finally:
            raw.remove()
    return out


async def _disk_attach(root: Path, n: int, size_mb: int = 512) -> dict[str, list[float]]:
    data = DataDir(root)
    disks = LoopDisks(data.disks, data.sandboxes)
    out: dict[str, list[float]] = {"spare_taken": [], "made_at_create": []}
    capsules = []
    try:
        for i in range(n):
            for kind, size in (("made_at_create", size_mb + 1 + i % 2), ("spare_taken", size_mb)):
                await disks.settle()
                capsule = data.capsule(f"{kind}-{i}")
                capsule.path.mkdir(parents=True)
                capsules.append(capsule)
                start = time.perf_counter()
                await disks.attach(capsule, size)  # a size unused since two others: never in stock
                out[kind].append((time.perf_counter() - start) * 1000)
    finally:
        await disks.close()
        for capsule in capsules:
            await disks.detach(capsule)
    return out


def disk_attach(n: int) -> dict[str, Any]:
    """A gVisor capsule's own disk, as a create gets it (the first sample of spares is made at once)."""
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="wrenn-bench-disks-") as tmp:
        root = Path(tmp)
        samples_ms = asyncio.run(_disk_attach(root, n + 1))
    return {
        "spare_taken": summary(samples_ms["spare_taken"][1:]),
        "made_at_create": summary(samples_ms["made_at_create"][1:]),
        "target": "spare taken p50 <= 5 ms",
    }


def measure(n: int | None = None) -> dict[str, Any]:
    n = n or samples(10, 2)
    with platform() as stack:
        with Capsule():
            pass  # the prepared checkpoint exists from here on, and the page cache is warm
        hits = _creates(n, POOL_REFILL_WAIT)
    with platform(WRENN_POOL_SIZE="0") as stack:
        _creates(1, 0)
        misses = _creates(n, 0.5)
        raw = raw_runs(stack.data_dir / "raw", n, prepared_checkpoint("gvisor"))
    restore_p50 = summary(raw["restore"])["p50_ms"]
    return {
        "create_to_running": {
            "pool_hit": hits,
            "pool_miss": misses,
            "raw_runsc_restore_until_envd": summary(raw["restore"]),
            "raw_runsc_run_until_envd": summary(raw["run"]),
            "miss_vs_raw_restore_p50": round(misses["sdk_client_create"]["p50_ms"] / restore_p50, 3),
            "target": "pool hit p50 <= 100 ms; miss p50 <= raw restore + 20 % (on a kept client)",
        },
        "gvisor_own_disk_added_to_create": disk_attach(n),
    }


if __name__ == "__main__":
    emit(measure())
