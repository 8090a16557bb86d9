"""Where a capsule's guest is on its host: the runtime's name for it and its directory.

A capsule taken from the warm pool keeps the name its guest was started under (`wp-…`), so tests that reach
past the API (runsc, checkpoint files) look the name up in the agent's record instead of assuming the id.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path


def guest(data_dir: Path, sandbox_id: str) -> tuple[str, Path]:
    for state in (data_dir / "sandboxes").glob("*/state.json"):
        if json.loads(state.read_text()).get("sandbox_id") == sandbox_id:
            return state.parent.name, state.parent
    raise LookupError(f"no record of {sandbox_id} under {data_dir}")


def kill_guest(data_dir: Path, sandbox_id: str) -> None:
    """Kill the capsule's guest behind the agent's back, as a crash would (SIGKILL), whatever its runtime."""
    name, workdir = guest(data_dir, sandbox_id)
    runtime = json.loads((workdir / "state.json").read_text())["runtime"]
    if runtime == "gvisor":
        subprocess.run(["runsc", "--root", str(data_dir / "runsc"), "kill", name, "KILL"], check=False)
    else:
        os.kill(int((workdir / "qemu.pid").read_text()), signal.SIGKILL)
