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
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol


@dataclass(frozen=True)
class Capabilities:
    pause_with_memory: bool
    snapshot: bool
    hardware_acceleration: bool
    disk_size_limit: bool
    # A guest with open TCP connections can be checkpointed (they continue after the restore); runsc 20221219
    # cannot, and a failed checkpoint kills its guest.
    checkpoint_keeps_connections: bool
    # The guest's root holds a chosen set of capabilities (gVisor: the OCI spec's, docs/containment.md,
    # "Privileges"); a VM's root holds every capability of its own kernel.
    guest_capabilities_limited: bool = False


@dataclass(frozen=True)
class Probe:
    """Whether this machine can run the runtime, and why (shown by `wrenn doctor` and at agent start)."""

    available: bool
    reason: str
    details: dict[str, str] = field(default_factory=dict)


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
    FROZEN = "frozen"  # its CPUs stopped, its memory kept (see `Runtime.freeze`)
    STOPPED = "stopped"
    MISSING = "missing"


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float
    memory_bytes: int


class Runtime(Protocol):
    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]

    async def probe(self) -> Probe: ...

    async def create(self, spec: SandboxSpec) -> None:
        """Prepare the disk and boot the guest; returns once the guest is started (envd may still be coming up)."""

    async def destroy(self, sandbox_id: str, workdir: Path) -> None:
        """Stop the guest at once and remove everything the runtime made for it; idempotent."""

    async def state(self, sandbox_id: str) -> RuntimeState: ...

    def exited(self, sandbox_id: str) -> bool:
        """Whether the guest has stopped on its own (crashed, panicked, killed): a cheap check, made often."""

    async def usage(self, sandbox_id: str) -> Usage | None: ...

    async def checkpoint(self, sandbox_id: str, checkpoint_dir: Path) -> None:
        """Save the guest's whole state (memory included) to disk and stop it. Needs `pause_with_memory`."""

    async def save_files(self, workdir: Path, template_dir: Path) -> None:
        """Copy the capsule's own files (what it changed over its template) into a new template directory."""

    async def restore(self, spec: SandboxSpec, checkpoint_dir: Path) -> None:
        """Start the guest again from a checkpoint made by `checkpoint`. Needs `pause_with_memory`."""

    async def freeze(self, sandbox_id: str) -> None:
        """Stop the guest's CPUs at once, its memory kept where it is."""

    async def thaw(self, sandbox_id: str) -> None:
        """Continue a frozen guest."""
