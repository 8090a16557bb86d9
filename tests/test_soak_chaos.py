"""The soak and chaos benches, small: what `bench.soak` and `bench.chaos` check at full size must hold at a
few cycles and one kill per scenario — nothing lost, nothing stuck, nothing left on the machine.

On the runtime `WRENN_RUNTIME` names (gVisor, the default of `wrenn up`, unless set).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from bench import chaos, soak
from wrenn_server.hostagent.runtimes import build_runtime

pytestmark = [pytest.mark.runtime, pytest.mark.sdk]


@pytest.fixture
def runtime(data_dir: Path) -> str:
    name = os.environ.get("WRENN_RUNTIME", "gvisor")
    probe = asyncio.run(build_runtime(name, data_dir).probe())
    if not probe.available:
        pytest.skip(f"the {name} runtime cannot run here: {probe.reason}")
    return name


def shown(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2)[-6000:]


def test_soak_loses_no_file_and_no_process_over_pause_resume_ttl_pauses_and_snapshot_generations(
    runtime: str,
) -> None:
    report = soak.measure(n=20, ttl_rounds=1, generation_count=2, runtime=runtime)["soak"]
    # Each part ran to its end: the cycles wrote their files, the TTL pause happened, the generations were made.
    cycles, ttl, generations = report["pause_resume"], report["ttl_pauses"], report["generations"]
    assert cycles["files_written"] == 20 and cycles["pause"]["n"] == 20, shown(report)
    assert cycles["resume_from_checkpoint"]["n"] == 2, shown(report)  # every 10th resume restores
    assert len(ttl["seconds_until_paused"]) == 1, shown(report)
    assert generations["snapshot"]["n"] == 2, shown(report)
    assert report["lost"] == 0, shown(report)


def assert_kills_landed(report: dict[str, Any]) -> None:
    """Every scenario ran, and its kill came while the operation was in flight."""
    for kill in report["kills"]:
        assert "failed" not in kill and "aborted" not in kill, shown(report)
        if kill["scenario"] == "create-burst":
            assert kill["accepted_before_kill"] >= 1, shown(report)
        elif kill["scenario"] in ("snapshot", "pause"):
            assert kill["killed_before_the_answer"], shown(report)
        elif kill["scenario"] == "disk-fill":
            assert kill["written_at_kill_mb"] > 0, shown(report)


def test_sigkill_of_wrenn_up_mid_operation_loses_nothing_leaves_nothing_stuck_or_leaked(runtime: str) -> None:
    options = chaos.Options(burst=3, snapshot_mb=32, settle_sec=20)
    report = chaos.run("up", chaos.plan_for("up", list(chaos.SCENARIOS)), options, runtime)
    assert [k["scenario"] for k in report["kills"]] == list(chaos.SCENARIOS), shown(report)
    assert_kills_landed(report)
    assert report["totals"] == {"lost": 0, "stuck": 0, "leaked": 0, "failed_scenarios": 0}, shown(report)
    # The capsule writing past its 512 MiB disk got ENOSPC at its size, the kill notwithstanding.
    fill = next(k for k in report["kills"] if k["scenario"] == "disk-fill")
    assert fill.get("disk_limit_held"), shown(report)


def test_sigkill_of_the_agent_or_the_control_plane_alone_loses_nothing(runtime: str) -> None:
    """A split deployment: the agent killed mid-pause, the control plane mid-create-burst."""
    options = chaos.Options(burst=3, snapshot_mb=32, settle_sec=20)
    plan = [("pause", "agent"), ("create-burst", "control-plane")]
    report = chaos.run("split", plan, options, runtime)
    assert_kills_landed(report)
    assert report["totals"] == {"lost": 0, "stuck": 0, "leaked": 0, "failed_scenarios": 0}, shown(report)
