"""The one contract every sandbox back end implements.

A runtime isolates one capsule: it prepares the capsule's disk on top of a read-only template, boots the guest
(whose init starts envd) inside the network namespace the agent made, and tears it all down again. It declares
what it can do in a frozen `Capabilities` value; the agent, `wrenn doctor` and the tests read that value, and
never discover support by catching exceptions. A runtime gets its config and nothing else: no global settings,
no database; where things are inside a capsule's or a template's directory, it asks `hostagent.layout`.

Its words: it freezes and thaws a guest (in memory), and checkpoints and restores one (to and from disk). Pause and
resume are the API's words, for what the agent makes of them (`hostagent/pausing.py`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar, Protocol


@dataclass(frozen=True)
class Capabilities:
    """What a runtime can do on this machine, as its `probe()` measured it (nothing before a probe). The
    agent sends it with its registration and heartbeats; the scheduler, `wrenn doctor` and the tests read it."""

    pause_with_memory: bool  # a checkpoint keeps the guest's memory and processes, and a restore continues them
    snapshot: bool  # a running guest can be saved as a template that new capsules continue
    hardware_acceleration: bool  # guest code runs on hardware virtualisation (measured: KVM really used)
    disk_size_limit: bool  # `disk_size_mb` bounds the guest's writes (ENOSPC inside past it)
    # A guest with open TCP connections can be checkpointed (they continue after the restore); runsc 20221219
    # cannot, and a failed checkpoint kills its guest.
    checkpoint_keeps_connections: bool
    guest_sees_vcpus: bool  # the guest is shown exactly its vCPUs (gVisor shows the host's, its time capped)
    guest_kernel: bool  # the guest runs a Linux kernel of its own: a serial console, sysrq, kernel panics
    memory_file: bool  # guest RAM is a host file that a checkpoint moves rather than copies
    layered_files: bool  # the guest's files are a host directory over its template's, not a disk image
    # The guest's root holds a chosen set of capabilities (gVisor: the OCI spec's, docs/containment.md,
    # "Privileges"); a VM's root holds every capability of its own kernel.
    guest_capabilities_limited: bool = False
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
    # Boot from the capsule's own disk as it is (its files kept, its template's checkpoint not restored): a
    # capsule whose guest ended, started again.
    cold: bool = False


class RuntimeState(enum.StrEnum):
    RUNNING = "running"
    FROZEN = "frozen"  # its CPUs stopped, its memory kept (see `Runtime.freeze`)
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

    def end_cause(self, sandbox_id: str) -> str:
        """Why a guest that `exited` ended, when the host can tell (its OOM killer): words for its end reason,
        or "". Asked before the guest is destroyed."""

    async def usage(self, sandbox_id: str) -> Usage | None: ...

    async def checkpoint(self, sandbox_id: str, checkpoint_dir: Path) -> None:
        """Save the guest's whole state (memory included) to disk and stop it. Needs `pause_with_memory`."""

    async def save_files(self, workdir: Path, template_dir: Path) -> None:
        """Copy the capsule's own files (what it changed over its template) into a new template directory."""

    async def restore(self, spec: SandboxSpec, checkpoint_dir: Path) -> None:
        """Start the guest again from a checkpoint made by `checkpoint`. Needs `pause_with_memory`."""

    async def freeze(self, sandbox_id: str) -> None:
        """Stop the guest at once, its memory kept where it is: no guest code runs until `thaw`. Idempotent."""

    async def thaw(self, sandbox_id: str) -> None:
        """Continue a frozen guest."""

    async def close(self) -> None:
        """Let go of what the runtime keeps for guests to come (gVisor: its spare disks); guests stay."""
