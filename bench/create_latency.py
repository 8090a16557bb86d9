"""Create → running through the SDK, beside the raw runtime doing the same: `runsc run` until envd answers.

The raw figure uses the same template, bundle and network as a capsule, prepared outside the timed part, so
the difference is what the platform adds (scheduling, database, namespaces, overlay, init of envd).
"""

from __future__ import annotations

import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from wrenn import Capsule

from wrenn_server.hostagent.network import Network

from .common import RawSandbox, emit, platform, summary


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
    samples = []
    for _ in range(n):
        raw = RawSandbox.prepare(root, network)
        start = time.perf_counter()
        raw.run()
        _wait_envd(raw.slot.host_ip, time.monotonic() + 30)
        samples.append((time.perf_counter() - start) * 1000)
        raw.remove()
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
