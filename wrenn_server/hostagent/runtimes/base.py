"""The one contract every sandbox back end implements.

A runtime isolates one capsule: it prepares the capsule's disk on top of a read-only template, boots the guest
(whose init starts envd) inside the network namespace the agent made, and tears it all down again. It declares
what it can do in a frozen `Capabilities` value; the agent, `wrenn doctor` and the tests read that value, and
never discover support by catching exceptions. A runtime gets its config and nothing else: no global settings,
no database.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar, Protocol

SNAPSHOT_FILE = "snapshot.json"
CHECKPOINT_IMAGE = "checkpoint.img"


def template_layers(template_dir: Path) -> list[Path]:
    """A template's read-only filesystem layers, top first: a base template is its `rootfs`; a snapshot
    template is the capsule's own changes (`upper`) over the layers of the template it came from."""
    snapshot = template_dir / SNAPSHOT_FILE
    if not snapshot.is_file():
        return [template_dir / "rootfs"]
    base = Path(json.loads(snapshot.read_text())["base"])
    return [template_dir / "upper", *template_layers(base)]


def template_runtime(template_dir: Path) -> str | None:
    """The runtime whose guest state a snapshot template holds (None: a base template, any runtime boots it)."""
    snapshot = template_dir / SNAPSHOT_FILE
    if not snapshot.is_file():
        return None
    return str(json.loads(snapshot.read_text()).get("runtime", "gvisor"))  # older snapshots: gVisor only


def template_image(template_dir: Path) -> Path:
    """The microVM outputs (kernel, initramfs, root disk) of the image at the bottom of a template's chain."""
    return template_layers(template_dir)[-1].parent / "vm"


def template_checkpoint(template_dir: Path) -> Path | None:
    """Where a snapshot template's guest state (memory, processes) is, if it has one."""
    checkpoint = template_dir / "checkpoint"
    return checkpoint if (checkpoint / CHECKPOINT_IMAGE).is_file() else None


@dataclass(frozen=True)
class Capabilities:
    """What a runtime can do on this machine, as its `probe()` measured it (nothing before a probe). The
    agent sends it with its registration and heartbeats; the scheduler, `wrenn doctor` and the tests read it."""

    pause_with_memory: bool  # a checkpoint keeps the guest's memory and processes, and a restore continues them
    snapshot: bool  # a running guest can be saved as a template that new capsules continue
    hardware_acceleration: bool  # guest code runs on hardware virtualisation (measured: KVM really used)
    disk_size_limit: bool  # `disk_size_mb` bounds the guest's disk (gVisor's writes go to the host's disk)
    # A guest with open TCP connections can be checkpointed (they continue after the restore); runsc 20221219
    # cannot, and a failed checkpoint kills its guest.
    checkpoint_keeps_connections: bool
    guest_sees_vcpus: bool  # the guest is shown exactly its vCPUs (gVisor shows the host's, its time capped)
    guest_kernel: bool  # the guest runs a Linux kernel of its own: a serial console, sysrq, kernel panics
    memory_file: bool  # guest RAM is a host file that a checkpoint moves rather than copies
    layered_files: bool  # the guest's files are a host directory over its template's, not a disk image
    restores: frozenset[str] = frozenset()  # runtimes whose snapshots (guest state) this one can restore

    def to_wire(self) -> dict[str, bool | list[str]]:
        """The JSON shape of the hosts API (`restores` sorted)."""
        wire: dict[str, bool | list[str]] = {
            f.name: getattr(self, f.name) for f in fields(self) if f.name != "restores"
        }
        wire["restores"] = sorted(self.restores)
        return wire


NO_CAPABILITIES = Capabilities(
    pause_with_memory=False,
    snapshot=False,
    hardware_acceleration=False,
    disk_size_limit=False,
    checkpoint_keeps_connections=False,
    guest_sees_vcpus=False,
    guest_kernel=False,
    memory_file=False,
    layered_files=False,
)


@dataclass(frozen=True)
class Probe:
    """Whether this machine can run the runtime, and why (shown by `wrenn doctor` and at agent start), with
    what it measured the runtime can do here."""

    available: bool
    reason: str
    details: dict[str, str] = field(default_factory=dict)
    capabilities: Capabilities = NO_CAPABILITIES


@dataclass(frozen=True)
class GuestNetwork:
    """Where the guest lives: the namespace the runtime must join and the guest's fixed address."""

    netns_path: Path
    address: str
    prefix_len: int
    gateway: str


@dataclass(frozen=True)
class SandboxSpec:
    sandbox_id: str
    template_dir: Path
    workdir: Path
    vcpus: int
    memory_mb: int
    disk_size_mb: int
    network: GuestNetwork


class RuntimeState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    MISSING = "missing"


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float
    memory_bytes: int


class Runtime(Protocol):
    name: ClassVar[str]
    capabilities: Capabilities  # as the last `probe()` measured them; `NO_CAPABILITIES` before one

    async def probe(self) -> Probe: ...

    async def create(self, spec: SandboxSpec) -> None:
        """Prepare the disk and boot the guest; returns once the guest is started (envd may still be coming up)."""

    async def destroy(self, sandbox_id: str, workdir: Path) -> None:
        """Stop the guest at once and remove everything the runtime made for it; idempotent."""

    async def state(self, sandbox_id: str) -> RuntimeState: ...

    def exited(self, sandbox_id: str) -> bool:
        """Whether the guest has stopped on its own (crashed, panicked, killed): a cheap check, made often."""

    async def usage(self, sandbox_id: str) -> Usage | None: ...

    async def pause(self, sandbox_id: str, checkpoint_dir: Path) -> None:
        """Save the guest's whole state (memory included) to disk and stop it. Needs `pause_with_memory`."""

    async def save_files(self, workdir: Path, template_dir: Path) -> None:
        """Copy the capsule's own files (what it changed over its template) into a new template directory."""

    async def resume(self, spec: SandboxSpec, checkpoint_dir: Path) -> None:
        """Start the guest again from a checkpoint made by `pause`. Needs `pause_with_memory`."""

    async def freeze(self, sandbox_id: str) -> None:
        """Stop the guest's CPUs at once, its memory kept where it is."""

    async def thaw(self, sandbox_id: str) -> None:
        """Continue a frozen guest."""
