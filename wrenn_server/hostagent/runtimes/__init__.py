"""Sandbox back ends behind one contract (`base.Runtime`), chosen by name or by probing."""

from __future__ import annotations

import json
from pathlib import Path

from ..kvm import probe_kvm
from ..layout import DataDir
from .base import Probe, Runtime
from .gvisor import GVisorConfig, GVisorRuntime
from .microvm import MicroVMConfig, MicroVMRuntime

RUNTIMES = ("gvisor", "microvm")


class NoRuntime(Exception):
    pass


def build_runtime(name: str, data_dir: Path) -> Runtime:
    data = DataDir(data_dir)
    if name == "gvisor":
        return GVisorRuntime(
            GVisorConfig(state_dir=data.runsc_state, disks_dir=data.disks, sandboxes_dir=data.sandboxes)
        )
    if name == "microvm":
        return MicroVMRuntime(MicroVMConfig(sandboxes_dir=data.sandboxes, image_dir=data.minimal_current))
    raise NoRuntime(f"unknown runtime {name!r}; choose one of: auto, {', '.join(RUNTIMES)}")


def runtimes_in_use(data_dir: Path) -> tuple[str, ...]:
    """The runtimes of the capsules recorded in the data directory, most used first."""
    counts: dict[str, int] = {}
    for state in (data_dir / "sandboxes").glob("*/state.json"):
        try:
            runtime = json.loads(state.read_text()).get("runtime")
        except (OSError, ValueError, AttributeError):
            continue
        if runtime in RUNTIMES:
            counts[runtime] = counts.get(runtime, 0) + 1
    return tuple(sorted(counts, key=lambda r: -counts[r]))


def auto_order() -> tuple[str, ...]:
    """microVMs where hardware KVM works; else gVisor, whose guests run at native speed; else emulated microVMs."""
    return ("microvm", "gvisor") if probe_kvm().usable else ("gvisor", "microvm")


async def probe_all(data_dir: Path) -> dict[str, Probe]:
    return {name: await build_runtime(name, data_dir).probe() for name in RUNTIMES}


async def select_runtime(name: str, data_dir: Path) -> Runtime:
    """The runtime to use: the named one if it works here, or for `auto` the first that works. `auto` tries
    first the runtime the data directory's capsules run on: an agent of another runtime would not know them,
    and its control plane would find them gone."""
    if name == "auto":
        in_use = runtimes_in_use(data_dir)
        candidates = (*in_use, *(c for c in auto_order() if c not in in_use))
    else:
        candidates = (name,)
    reasons = []
    for candidate in candidates:
        runtime = build_runtime(candidate, data_dir)
        probe = await runtime.probe()
        if probe.available:
            return runtime
        reasons.append(f"{candidate}: {probe.reason}")
    raise NoRuntime("no runtime can run on this machine: " + "; ".join(reasons))
