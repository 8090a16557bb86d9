"""The real `wrenn` SDK (PyPI wrenn==0.3.0, Python >= 3.13) against `wrenn up`, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.cleanup import purge_data_dir
from tests.controlplane.pg import PostgresServer, postgres_server
from tests.skips import skip_missing
from tests.stack import Stack, free_port
from wrenn_server.hostagent.runtimes import build_runtime

if TYPE_CHECKING:
    from wrenn import Capsule

__all__ = ["postgres_server"]

if sys.version_info < (3, 13):
    skip_missing(
        "Python 3.13",
        f"the wrenn SDK (wrenn==0.3.0) needs Python >= 3.13, this is {sys.version.split()[0]}",
        allow_module_level=True,
    )
try:
    import wrenn  # noqa: F401
except ImportError:
    skip_missing("wrenn SDK", "wrenn==0.3.0 is not installed (make bootstrap installs it)", allow_module_level=True)

# Each suite runs on SQLite and PostgreSQL with the runtime `auto` picks here, and once more on microVMs.
BACKENDS = [
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("microvm", marks=pytest.mark.microvm),
]


@pytest.fixture(scope="session", params=BACKENDS)
def stack(request: pytest.FixtureRequest, data_dir: Path) -> Iterator[Stack]:
    root = Path(tempfile.mkdtemp(prefix=f"wrenn-sdk-{request.param}-", dir="/var/tmp"))
    (root / "images").symlink_to(data_dir / "images")
    if request.param in ("sqlite", "microvm"):
        url = f"sqlite+aiosqlite:///{root / 'wrenn.db'}"
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        url = server.create_database()
    # A paused capsule is checkpointed to disk after a second: the tests see both ways back, thaw and restore.
    # The reconciler runs every 2 s, so a capsule the agent paused for inactivity soon shows `paused`.
    env = {"WRENN_CHECKPOINT_AFTER_SEC": "1", "WRENN_RECONCILE_INTERVAL_SEC": "2"}
    if request.param == "microvm":
        probe = asyncio.run(build_runtime("microvm", data_dir).probe())
        if not probe.available:
            skip_missing("runtime microvm", f"it cannot run here: {probe.reason}")
        env["WRENN_RUNTIME"] = "microvm"
    stack = Stack(root, url, free_port(), free_port(), extra_env=env)
    stack.start()
    try:
        yield stack
    finally:
        try:
            stack.destroy_all()
        finally:
            stack.stop()
            purge_data_dir(root)


@pytest.fixture(scope="module", autouse=True)
def sdk_configured(stack: Stack) -> Iterator[None]:
    """Configured the way a user does it: the lines `wrenn up` printed, as environment variables."""
    saved = dict(os.environ)
    os.environ.update(stack.config())
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def capsule(stack: Stack) -> Iterator[Capsule]:
    """One capsule shared by a test module; leaving the block destroys it."""
    from wrenn import Capsule

    with Capsule() as box:
        yield box
