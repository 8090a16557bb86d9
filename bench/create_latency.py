"""Create → running through the SDK, beside the raw runtime doing the same: `runsc run` until envd answers.

The raw figure uses the same template, bundle and network as a capsule, prepared outside the timed part, so
the difference is what the platform adds (scheduling, database, namespaces, overlay, init of envd).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from wrenn import Capsule

from wrenn_server.hostagent.network import Network
from wrenn_server.hostagent.runtimes.base import SandboxSpec
from wrenn_server.hostagent.runtimes.gvisor import _HIDE_NET_SYSCTL, _mount_overlay, _oci_spec

from .common import IMAGES, emit, platform, summary


def _wait_envd(address: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{address}:49983/health", timeout=0.5):
                return
        except OSError:
            time.sleep(0.005)
    raise TimeoutError("envd did not answer")


def raw_runs(root: Path, n: int) -> list[float]:
    network = Network(f"bench-{uuid.uuid4().hex[:8]}")
    template = (IMAGES / "minimal" / "current").resolve()
    samples = []
    for _ in range(n):
        slot = network.allocate()
        asyncio.run(network.setup(slot))
        sandbox_id = f"bench-{uuid.uuid4().hex[:12]}"
        workdir = root / sandbox_id
        spec = SandboxSpec(sandbox_id, template, workdir, 1, 512, 0, slot.guest)
        rootfs = asyncio.run(_mount_overlay([template / "rootfs"], workdir))
        (workdir / "bundle").mkdir()
        (workdir / "bundle" / "config.json").write_text(json.dumps(_oci_spec(spec, rootfs)))
        runsc = ["runsc", "--root", str(root / "runsc"), "--platform", "ptrace", "--network", "sandbox"]
        argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", _HIDE_NET_SYSCTL, "sh", *runsc,
                "run", "--detach", "--bundle", str(workdir / "bundle"), sandbox_id]
        start = time.perf_counter()
        with (workdir / "console.log").open("wb") as log:
            subprocess.run(argv, check=True, stdout=log, stderr=log, start_new_session=True)
        _wait_envd(slot.host_ip, time.monotonic() + 30)
        samples.append((time.perf_counter() - start) * 1000)
        subprocess.run([*runsc[:3], "delete", "--force", sandbox_id], check=False, capture_output=True)
        subprocess.run(["umount", "-l", str(rootfs)], check=False)
        asyncio.run(network.teardown(slot))
    return samples


def measure(n: int = 10) -> dict[str, Any]:
    with platform() as stack:
        with Capsule():
            pass  # warm up the template's page cache and the control plane
        sdk = []
        for _ in range(n):
            start = time.perf_counter()
            capsule = Capsule()
            sdk.append((time.perf_counter() - start) * 1000)
            assert capsule.get_info().status.value == "running"
            capsule.destroy()
            capsule._client.close()
        raw = raw_runs(stack.data_dir / "raw", n)
    return {
        "create_to_running": {
            "sdk_capsule_create": summary(sdk),
            "raw_runsc_run_until_envd": summary(raw),
            "ratio_p50": round(summary(sdk)["p50_ms"] / summary(raw)["p50_ms"], 3),
            "target": "ratio_p50 <= 1.2",
        }
    }


if __name__ == "__main__":
    emit(measure())
