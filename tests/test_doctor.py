"""`wrenn doctor` says what each runtime measured it can do on this machine, as the agent would report it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from tests.skips import skip_missing
from wrenn_server.hostagent.runtimes import RUNTIMES, build_runtime


def rows(output: str) -> dict[str, str]:
    """The doctor's table as check → the rest of its row (a long row wraps onto the following lines)."""
    table: dict[str, str] = {}
    last = ""
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip("│┃ ").split("│")]
        if len(cells) != 3:
            continue
        if cells[0]:
            last = cells[0]
            table[last] = f"{cells[1]} {cells[2]}".strip()
        elif last:
            table[last] += f" {cells[2]}"
    return table


def test_doctor_shows_each_runtimes_measured_capabilities(data_dir: Path) -> None:
    env = {**os.environ, "WRENN_DIR": str(data_dir), "COLUMNS": "400"}
    doctor = subprocess.run(
        [sys.executable, "-m", "wrenn_server.cli", "doctor"], env=env, capture_output=True, text=True, check=True
    )
    table = rows(doctor.stdout)
    shown = 0
    for name in RUNTIMES:
        probe = asyncio.run(build_runtime(name, data_dir).probe())
        if not probe.available:
            assert f"{name} can" not in table  # nothing is claimed for a runtime that cannot run
            continue
        shown += 1
        row = table[f"{name} can"]
        yes, no, restores = (part.split(":", 1)[1].split() for part in row.split(";"))
        assert restores == [name]  # its own snapshots, no other runtime's
        assert set(yes) | set(no) == set(probe.capabilities.to_wire()) - {"restores"}
        assert ("hardware_acceleration" in yes) == probe.capabilities.hardware_acceleration
        if name == "microvm":  # the accelerator row and the capability say the same
            assert ("hardware_acceleration" in yes) == table["microVM accelerator"].startswith("kvm")
    if not shown:
        skip_missing("runtime", "no runtime can run here")
