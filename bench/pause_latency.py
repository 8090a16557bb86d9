"""Pause → paused and resume → running through the SDK (a capsule frozen moments ago, and one whose checkpoint
is on disk), beside the raw runtime on a sandbox of the same template, bundle and network: `runsc pause` /
`runsc resume` (a freeze in memory), `runsc checkpoint`, and `runsc restore` until envd answers."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from wrenn import Capsule

from wrenn_server.hostagent.network import Network
from wrenn_server.hostagent.runtimes.base import SandboxSpec
from wrenn_server.hostagent.runtimes.gvisor import _HIDE_NET_SYSCTL, _mount_overlay, _oci_spec

from .common import IMAGES, emit, platform, summary


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


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def raw_cycles(root: Path, n: int) -> dict[str, list[float]]:
    network = Network(f"bench-{uuid.uuid4().hex[:8]}")
    template = (IMAGES / "minimal" / "current").resolve()
    slot = network.allocate()
    asyncio.run(network.setup(slot))
    sandbox_id = f"bench-{uuid.uuid4().hex[:12]}"
    workdir = root / sandbox_id
    spec = SandboxSpec(sandbox_id, template, workdir, 1, 512, 0, slot.guest)
    rootfs = asyncio.run(_mount_overlay([template / "rootfs"], workdir))
    (workdir / "bundle").mkdir()
    (workdir / "bundle" / "config.json").write_text(json.dumps(_oci_spec(spec, rootfs)))
    runsc = ["runsc", "--root", str(root / "runsc")]
    flags = ["--platform", "ptrace", "--network", "sandbox", "--overlay2", "none"]

    def boot(command: list[str]) -> None:
        argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", _HIDE_NET_SYSCTL, "sh", *runsc, *flags]
        with (workdir / "console.log").open("ab") as log:
            subprocess.run([*argv, *command], check=True, stdout=log, stderr=log, start_new_session=True)

    out: dict[str, list[float]] = {"checkpoint": [], "restore_until_envd": [], "freeze": [], "thaw": []}
    try:
        boot(["run", "--detach", "--bundle", str(workdir / "bundle"), sandbox_id])
        _wait_port(slot.host_ip, time.monotonic() + 30)
        time.sleep(1)
        for i in range(n):
            start = time.perf_counter()
            subprocess.run([*runsc, "pause", sandbox_id], check=True, capture_output=True)
            out["freeze"].append(_ms(start))
            start = time.perf_counter()
            subprocess.run([*runsc, "resume", sandbox_id], check=True, capture_output=True)
            out["thaw"].append(_ms(start))
            image = workdir / f"checkpoint-{i}"
            start = time.perf_counter()
            checkpoint = [*runsc, "checkpoint", "--image-path", str(image), sandbox_id]
            subprocess.run(checkpoint, check=True, capture_output=True)
            out["checkpoint"].append(_ms(start))
            subprocess.run([*runsc, "delete", "--force", sandbox_id], check=False, capture_output=True)
            asyncio.run(network.readdress(slot))
            start = time.perf_counter()
            boot(["restore", "--detach", "--image-path", str(image), "--bundle", str(workdir / "bundle"), sandbox_id])
            _wait_port(slot.host_ip, time.monotonic() + 30)
            out["restore_until_envd"].append(_ms(start))
    finally:
        subprocess.run([*runsc, "delete", "--force", sandbox_id], check=False, capture_output=True)
        subprocess.run(["umount", "-l", str(rootfs)], check=False)
        asyncio.run(network.teardown(slot))
    return out


def measure(n: int = 10) -> dict[str, Any]:
    # Checkpointed half a second after the pause: an immediate resume thaws, a later one restores.
    with platform(WRENN_CHECKPOINT_AFTER_SEC="0.5") as stack, Capsule() as capsule:
        capsule.commands.run("sleep 100000", background=True)
        pause, recent, cold = [], [], []
        for i in range(2 * n + 1):
            start = time.perf_counter()
            capsule.pause()
            pause.append(_ms(start))
            if i % 2:
                time.sleep(1.5)
            start = time.perf_counter()
            capsule.resume()
            (cold if i % 2 else recent).append(_ms(start))
        raw = raw_cycles(stack.data_dir / "raw", n)
    return {
        "pause_resume": {
            "sdk_pause": summary(pause[1:]),
            "sdk_resume_recently_paused": summary(recent[1:]),
            "sdk_resume_from_checkpoint": summary(cold),
            "raw_runsc_checkpoint": summary(raw["checkpoint"]),
            "raw_runsc_restore_until_envd": summary(raw["restore_until_envd"]),
            "raw_runsc_freeze": summary(raw["freeze"]),
            "raw_runsc_thaw": summary(raw["thaw"]),
            "target": "pause p50 <= 100 ms; resume p50 <= 150 ms (recent) or <= raw restore + 20 %",
        }
    }


if __name__ == "__main__":
    emit(measure())
