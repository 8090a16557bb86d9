"""Two kinds of skip, told apart by their reason.

A missing prerequisite is something `make bootstrap` installs or builds (the image, runsc, QEMU, the SDK's
Python 3.13, PostgreSQL, Redis, root): `skip_missing` skips the test, and under CI (`CI=true`) the run fails
instead (tests/conftest.py). A capability the runtime or the machine does not have is a skip everywhere:
`skip_unless_capable` names the capability, never the runtime. Every skip's reason is printed at the end of
the run, grouped.
"""

from __future__ import annotations

from typing import NoReturn

import pytest

from wrenn_server.hostagent.runtimes.base import Capabilities

MISSING = "missing prerequisite"
INCAPABLE = "not capable"


def skip_missing(prerequisite: str, reason: str, *, allow_module_level: bool = False) -> NoReturn:
    """Skip for want of something the bootstrap provides; under CI=true that fails the run."""
    __tracebackhide__ = True  # the report points at the caller
    pytest.skip(f"{MISSING} {prerequisite}: {reason}", allow_module_level=allow_module_level)


def skip_unless_capable(capabilities: Capabilities, capability: str, reason: str) -> None:
    """Skip unless the runtime, as its probe measured it, has `capability` (a field of `Capabilities`)."""
    __tracebackhide__ = True
    if not getattr(capabilities, capability):
        pytest.skip(f"{INCAPABLE}: {capability} is false here: {reason}")


def skip_reason(longrepr: object) -> str:
    """The reason of a skipped report, without its location and pytest's `Skipped: ` prefix."""
    reason = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")
