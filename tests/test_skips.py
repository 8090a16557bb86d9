"""The suite's skip report: every skip's reason summed up at the end; a missing prerequisite fails the run under CI
(`CI=true`), a capability the runtime lacks stays a skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SAMPLE = """
from tests.skips import skip_missing, skip_unless_capable
from wrenn_server.hostagent.runtimes.base import NO_CAPABILITIES


def test_needs_redis():
    skip_missing("Redis", "redis-server not found")


def test_needs_a_guest_kernel():
    skip_unless_capable(NO_CAPABILITIES, "guest_kernel", "no sysrq to panic")


def test_runs():
    pass
"""


def skip_summary(output: str, count: int) -> str:
    """The lines of the `skips by reason` section."""
    return output.split(f"skips by reason ({count})", 1)[1].split("=====", 1)[0]


def pytest_run(*args: str, ci: bool, **env: str) -> subprocess.CompletedProcess[str]:
    """pytest in a process of its own, with this suite's skip report (tests/conftest.py) loaded."""
    environment = {**os.environ, "CI": "true" if ci else "", **env}
    argv = [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", *args]
    return subprocess.run(argv, cwd=REPO, env=environment, capture_output=True, text=True, timeout=300)


def test_skips_are_summed_up_by_reason_and_pass_outside_ci(tmp_path: Path) -> None:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    run = pytest_run("-q", str(tmp_path / "test_sample.py"), "--rootdir", str(tmp_path), ci=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed, 2 skipped" in run.stdout, run.stdout
    summary = skip_summary(run.stdout, 2)
    assert "1  missing prerequisite Redis: redis-server not found" in summary, run.stdout
    assert "1  not capable: guest_kernel is false here: no sysrq to panic" in summary, run.stdout


def test_under_ci_a_missing_prerequisite_fails_and_a_capability_stays_a_skip(tmp_path: Path) -> None:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    run = pytest_run("-q", str(tmp_path / "test_sample.py"), "--rootdir", str(tmp_path), ci=True)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 failed, 1 passed, 1 skipped" in run.stdout, run.stdout
    assert "CI=true, so this fails instead of skipping: missing prerequisite Redis" in run.stdout, run.stdout
    summary = skip_summary(run.stdout, 1)
    assert "not capable: guest_kernel" in summary and "Redis" not in summary, run.stdout


def test_without_the_base_image_the_runtime_suites_skip_or_fail_under_ci() -> None:
    args = ("-q", "tests/runtime/test_files.py")
    skipped = pytest_run(*args, ci=False, WRENN_TEST_IMAGES="/nonexistent")
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    assert "missing prerequisite image: no base image in /nonexistent" in skipped.stdout, skipped.stdout
    failed = pytest_run(*args, ci=True, WRENN_TEST_IMAGES="/nonexistent")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "CI=true, so this fails instead of skipping: missing prerequisite image" in failed.stdout, failed.stdout
