"""The durable record the agent keeps for each capsule, so a restart re-adopts instead of losing it."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any

from .layout import CapsuleDir, DataDir


class SandboxStatus(StrEnum):
    """Where a capsule is on this host (the record keeps the value)."""

    STARTING = "starting"  # its guest is coming up
    RUNNING = "running"
    PAUSED = "paused"  # see `PausedMode`
    ERROR = "error"  # ended (its record kept as a tombstone, saying why)


class PausedMode(StrEnum):
    """How a paused capsule waits (the record keeps the value)."""

    NONE = ""  # not paused
    FROZEN = "frozen"  # its guest frozen in memory
    CHECKPOINT = "checkpoint"  # its guest's state on disk, no memory held


@dataclass
class SandboxRecord:
    sandbox_id: str
    runtime: str
    slot: int
    template: str
    template_id: str
    team_id: str
    template_dir: str
    vcpus: int
    memory_mb: int
    disk_size_mb: int
    timeout_sec: int
    default_user: str = ""
    default_env: dict[str, str] = field(default_factory=dict)
    status: SandboxStatus = SandboxStatus.STARTING
    paused_mode: PausedMode = PausedMode.NONE
    checkpoint_pending: bool = False  # frozen, and to be checkpointed (it holds no network connection)
    error: str = ""
    created_at: float = 0.0
    # The runtime's name for the guest, and its directory's: a capsule taken from the warm pool keeps the name
    # it was started under, before its id was known. Empty: the capsule id.
    runtime_id: str = ""
    released: bool = False  # its guest and network slot are gone already (a tombstone kept for its record)
    snapshotting: str = ""  # the template directory a snapshot under way is writing (settled at agent start)

    def __post_init__(self) -> None:
        self.status = SandboxStatus(self.status)  # a record read from disk holds the values as strings
        self.paused_mode = PausedMode(self.paused_mode)

    @property
    def name(self) -> str:
        return self.runtime_id or self.sandbox_id

    def set_running(self) -> None:
        self.status, self.paused_mode, self.checkpoint_pending = SandboxStatus.RUNNING, PausedMode.NONE, False

    def set_paused(self, mode: PausedMode, checkpoint_pending: bool = False) -> None:
        self.status, self.paused_mode, self.checkpoint_pending = SandboxStatus.PAUSED, mode, checkpoint_pending

    @property
    def checkpointed(self) -> bool:
        """Paused with its state on disk (no guest left to watch)."""
        return self.status is SandboxStatus.PAUSED and self.paused_mode is PausedMode.CHECKPOINT


class RecordStore:
    """One record per capsule in its working directory (see `layout`), replaced atomically on every change."""

    def __init__(self, data: DataDir) -> None:
        self.data = data

    def capsule(self, record: SandboxRecord) -> CapsuleDir:
        """The capsule's working directory."""
        return self.data.capsule(record.name)

    def save(self, record: SandboxRecord) -> None:
        capsule = self.capsule(record)
        capsule.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = capsule.record.with_name(f"{capsule.record.name}.tmp")
        with tmp.open("w") as f:
            json.dump(asdict(record), f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(capsule.record)

    def load_all(self) -> list[SandboxRecord]:
        known = {f.name for f in fields(SandboxRecord)}
        records = []
        for path in sorted(CapsuleDir(p).record for p in self.data.sandboxes.iterdir() if p.is_dir()):
            try:
                raw: dict[str, Any] = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(raw, dict):
                continue
            try:
                records.append(SandboxRecord(**{k: v for k, v in raw.items() if k in known}))
            except (TypeError, ValueError):  # not a record this agent can read
                continue
        return records
