"""Exec round trip of `true` through the SDK, beside the same start straight to envd, `runsc exec` and a
fork+exec inside the sandbox.

The SDK and envd-direct samples alternate, so that both see the same machine: under gVisor's ptrace platform a
process start costs several milliseconds and drifts with the host's load, which would otherwise swamp the
difference that is ours (control plane, host agent, network hop).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

import httpx
from wrenn import Capsule

from .common import emit, platform, samples, summary, timed

ENVD_PORT = 49983
INSIDE = """
import json, subprocess, time
samples = []
for _ in range(60):
    start = time.perf_counter()
    subprocess.run(["/bin/true"])
    samples.append((time.perf_counter() - start) * 1000)
print(json.dumps(samples))
"""


def paired(capsule: Capsule, envd_url: str, n: int) -> tuple[list[float], list[float]]:
    """SDK `commands.run("true")` and envd's `/process/start` of the same `/bin/sh -c true`, alternating."""
    body = {"cmd": "/bin/sh", "args": ["-c", "true"], "mode": "run", "timeout_sec": 30}
    sdk: list[float] = []
    envd: list[float] = []
    warmup = samples(20, 2)
    with httpx.Client(timeout=30) as client:
        for i in range(n + warmup):
            start = time.perf_counter()
            capsule.commands.run("true")
            middle = time.perf_counter()
            response = client.post(f"{envd_url}/process/start", json=body)
            end = time.perf_counter()
            response.raise_for_status()
            if i >= warmup:
                sdk.append((middle - start) * 1000)
                envd.append((end - middle) * 1000)
    return sdk, envd


def measure(n: int | None = None) -> dict[str, Any]:
    n = n or samples(100, 5)
    with platform() as stack, Capsule() as capsule:
        info = httpx.get(
            f"{os.environ['WRENN_BASE_URL']}/v1/capsules/{capsule.capsule_id}",
            headers={"X-API-Key": os.environ["WRENN_API_KEY"]},
        ).json()
        sdk, envd = paired(capsule, f"http://{info['host_ip']}:{ENVD_PORT}", n)
        inside = json.loads(capsule.commands.run(f"python3 -c '{INSIDE}'").stdout)
        runsc_root = stack.data_dir / "runsc"
        raw = timed(
            lambda: subprocess.run(
                ["runsc", "--root", str(runsc_root), "exec", capsule.capsule_id, "/bin/true"], check=True
            ),
            samples(max(20, n // 5), 3),
        )
    return {
        "exec_true": {
            "sdk_commands_run": summary(sdk),
            "envd_direct_same_run": summary(envd),
            "raw_runsc_exec": summary(raw),
            "fork_exec_inside_sandbox": summary(inside),
            "target": "sdk p50 <= 10 ms",
        }
    }


if __name__ == "__main__":
    emit(measure())
