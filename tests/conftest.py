"""Fixtures shared by every test folder: the data directory with the base image."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cleanup import purge_data_dir

# WRENN_TEST_IMAGES: images built elsewhere (say, by a branch whose envd differs from the installed one).
SHARED_IMAGES = Path(os.environ.get("WRENN_TEST_IMAGES", "/var/lib/wrenn/images"))


@pytest.fixture(scope="session")
def data_dir() -> Iterator[Path]:
    """A private WRENN_DIR whose images are the ones bootstrap built (building them per test run is slow)."""
    if not (SHARED_IMAGES / "minimal" / "current" / "rootfs").is_dir():
        pytest.skip(f"no base image in {SHARED_IMAGES}: run `make bootstrap` (wrenn image build)")
    root = Path(tempfile.mkdtemp(prefix="wrenn-test-", dir="/var/tmp"))
    (root / "images").symlink_to(SHARED_IMAGES)
    yield root
    purge_data_dir(root)
