"""Sandbox back ends behind one contract (`base.Runtime`), chosen by name or by probing."""

from __future__ import annotations

from pathlib import Path

from .base import Probe, Runtime
from .gvisor import GVisorConfig, GVisorRuntime

RUNTIMES = ("gvisor",)


class NoRuntime(Exception):
    pass


def build_runtime(name: str, data_dir: Path) -> Runtime:
    if name == "gvisor":
        return GVisorRuntime(GVisorConfig(state_dir=data_dir / "runsc"))
    raise NoRuntime(f"unknown runtime {name!r}; choose one of: auto, {', '.join(RUNTIMES)}")


async def probe_all(data_dir: Path) -> dict[str, Probe]:
    return {name: await build_runtime(name, data_dir).probe() for name in RUNTIMES}


async def select_runtime(name: str, data_dir: Path) -> Runtime:
    """The runtime to use: the named one if it works here, or for `auto` the first that works."""
    candidates = RUNTIMES if name == "auto" else (name,)
    reasons = []
    for candidate in candidates:
        runtime = build_runtime(candidate, data_dir)
        probe = await runtime.probe()
        if probe.available:
            return runtime
        reasons.append(f"{candidate}: {probe.reason}")
    raise NoRuntime("no runtime can run on this machine: " + "; ".join(reasons))
