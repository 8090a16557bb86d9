"""Fixtures shared by every test folder (the data directory with the base image), and the skip report: every
skip's reason grouped at the end, and under CI (`CI=true`) a missing prerequisite failing the run (tests/skips.py)."""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.cleanup import purge_data_dir
from tests.skips import MISSING, skip_missing, skip_reason

# WRENN_TEST_IMAGES: images built elsewhere (say, by a branch whose envd differs from the installed one).
SHARED_IMAGES = Path(os.environ.get("WRENN_TEST_IMAGES", "/var/lib/wrenn/images"))


@pytest.fixture(scope="session")
def data_dir() -> Iterator[Path]:
    """A private WRENN_DIR whose images are the ones bootstrap built (building them per test run is slow)."""
    if not (SHARED_IMAGES / "minimal" / "current" / "rootfs").is_dir():
        skip_missing("image", f"no base image in {SHARED_IMAGES}: run `make bootstrap` (wrenn image build)")
    root = Path(tempfile.mkdtemp(prefix="wrenn-test-", dir="/var/tmp"))
    (root / "images").symlink_to(SHARED_IMAGES)
    yield root
    purge_data_dir(root)


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _fail_if_missing(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Under CI, a test (or folder) skipped for a missing prerequisite fails: the bootstrap should have made it."""
    if report.skipped and under_ci() and not hasattr(report, "wasxfail"):
        reason = skip_reason(report.longrepr)
        if reason.startswith(MISSING):
            report.outcome = "failed"
            report.longrepr = f"CI=true, so this fails instead of skipping: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    _fail_if_missing(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    _fail_if_missing(report)
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Skips by reason, most frequent first: a missing prerequisite is told apart from a capability."""
    reasons = Counter(skip_reason(report.longrepr) for report in terminalreporter.stats.get("skipped", []))
    if not reasons:
        return
    terminalreporter.section(f"skips by reason ({sum(reasons.values())})", sep="-")
    for reason, count in reasons.most_common():
        terminalreporter.write_line(f"{count:5d}  {reason}")
    if any(reason.startswith(MISSING) for reason in reasons):
        terminalreporter.write_line("       (a missing prerequisite fails the run under CI=true; `make bootstrap`)")
