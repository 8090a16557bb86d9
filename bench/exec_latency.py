"""Exec round trip of `true` through the SDK, beside `runsc exec` and a fork+exec inside the sandbox."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from wrenn import Capsule

from .common import emit, platform, summary, timed

INSIDE = """
import json, subprocess, time
samples = []
for _ in range(60):
    start = time.perf_counter()
    subprocess.run(["/bin/true"])
    samples.append((time.perf_counter() - start) * 1000)
print(json.dumps(samples))
"""


def measure(n: int = 100) -> dict[str, Any]:
    with platform() as stack, Capsule() as capsule:
        sdk = timed(lambda: capsule.commands.run("true"), n)
        inside = json.loads(capsule.commands.run(f"python3 -c '{INSIDE}'").stdout)
        runsc_root = stack.data_dir / "runsc"
        raw = timed(
            lambda: subprocess.run(["runsc", "--root", str(runsc_root), "exec", capsule.capsule_id, "/bin/true"],
                                   check=True),
            max(20, n // 5),
        )
    return {
        "exec_true": {
            "sdk_commands_run": summary(sdk),
            "raw_runsc_exec": summary(raw),
            "fork_exec_inside_sandbox": summary(inside),
            "target": "sdk p50 <= 10 ms",
        }
    }


if __name__ == "__main__":
    emit(measure())
