"""Pause → paused and resume → running through the SDK (a capsule frozen moments ago, and one whose checkpoint
is on disk), beside the raw runtime on a sandbox of the same template, bundle and network: `runsc pause` /
`runsc resume` (a freeze in memory), `runsc checkpoint`, and `runsc restore` until envd answers."""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

from wrenn import Capsule

from tests.guests import guest

from .common import (
    RawSandbox,
    creates_from_a_snapshot,
    emit,
    ms_since,
    pause_resume_cycles,
    platform,
    raw_network,
    samples,
    summary,
)


def _wait_port(address: str, deadline: float) -> None:
    """Until envd accepts; the probe leaves no connection state in the guest (a reset, not a close)."""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, 49983), timeout=0.5) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
        except OSError:
            time.sleep(0.005)
    raise TimeoutError("envd did not answer")


def _memory_held(data_dir: Path, capsule_id: str) -> int:
    """What the host still spends on a checkpointed capsule's memory: its guest's memory cgroup, if any."""
    name, _ = guest(data_dir, capsule_id)
    usage = Path("/sys/fs/cgroup/memory/wrenn") / name / "memory.usage_in_bytes"
    return int(usage.read_text()) if usage.exists() else 0


def raw_cycles(root: Path, n: int) -> dict[str, list[float]]:
    raw = RawSandbox.prepare(root, raw_network(root))
    sandbox_id, bundle = raw.sandbox_id, str(raw.workdir / "bundle")
    out: dict[str, list[float]] = {"checkpoint": [], "restore_until_envd": [], "freeze": [], "thaw": []}
    try:
        raw.run()
        _wait_port(raw.slot.host_ip, time.monotonic() + 30)
        time.sleep(1)
        for i in range(n):
            start = time.perf_counter()
            subprocess.run(raw.runsc("pause", sandbox_id), check=True, capture_output=True)
            out["freeze"].append(ms_since(start))
            start = time.perf_counter()
            subprocess.run(raw.runsc("resume", sandbox_id), check=True, capture_output=True)
            out["thaw"].append(ms_since(start))
            image = str(raw.workdir / f"checkpoint-{i}")
            start = time.perf_counter()
            subprocess.run(raw.runsc("checkpoint", "--image-path", image, sandbox_id), check=True, capture_output=True)
            out["checkpoint"].append(ms_since(start))
            subprocess.run(raw.runsc("delete", "--force", sandbox_id), check=False, capture_output=True)
            asyncio.run(raw.network.readdress(raw.slot))
            start = time.perf_counter()
            raw.boot("restore", "--detach", "--image-path", image, "--bundle", bundle, sandbox_id)
            _wait_port(raw.slot.host_ip, time.monotonic() + 30)
            out["restore_until_envd"].append(ms_since(start))
    finally:
        raw.remove()
    return out


def measure(n: int | None = None) -> dict[str, Any]:
    n = n or samples(10, 2)
    # Checkpointed half a second after the pause: an immediate resume thaws, a later one restores.
    with platform(WRENN_CHECKPOINT_AFTER_SEC="0.5") as stack, Capsule() as capsule:
        capsule.commands.run("sleep 100000", background=True)
        held: list[int] = []
        pause, recent, cold = pause_resume_cycles(
            capsule, n, lambda: held.append(_memory_held(stack.data_dir, capsule.capsule_id))
        )
        from_template = creates_from_a_snapshot(capsule, n)
        raw = raw_cycles(stack.data_dir / "raw", n)
    return {
        "pause_resume": {
            "sdk_pause": summary(pause[1:]),
            "sdk_resume_recently_paused": summary(recent[1:]),
            "sdk_resume_from_checkpoint": summary(cold),
            "raw_runsc_checkpoint": summary(raw["checkpoint"]),
            "raw_runsc_restore_until_envd": summary(raw["restore_until_envd"]),
            "sdk_create_from_snapshot_template": summary(from_template),
            "raw_runsc_freeze": summary(raw["freeze"]),
            "raw_runsc_thaw": summary(raw["thaw"]),
            "memory_held_by_cold_paused_capsule_bytes": max(held),
            "target": "pause p50 <= 100 ms; resume p50 <= 150 ms (recent) or <= raw restore + 20 %; "
            "a cold paused capsule holds ~0 memory",
        }
    }


if __name__ == "__main__":
    emit(measure())
