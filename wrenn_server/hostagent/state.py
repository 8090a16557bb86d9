"""The durable record the agent keeps for each capsule, so a restart re-adopts instead of losing it."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


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
    status: str = "starting"
    # How a paused capsule waits: "checkpoint" (its state on disk, no memory held) or "frozen" (in memory).
    paused_mode: str = ""
    checkpoint_pending: bool = False  # frozen, and to be checkpointed (it holds no network connection)
    error: str = ""
    created_at: float = 0.0
    # The runtime's name for the guest, and its directory's: a capsule taken from the warm pool keeps the name
    # it was started under, before its id was known. Empty: the capsule id.
    runtime_id: str = ""
    released: bool = False  # its guest and network slot are gone already (a tombstone kept for its record)

    @property
    def name(self) -> str:
        return self.runtime_id or self.sandbox_id


class RecordStore:
    """One `state.json` per capsule under `<dir>/sandboxes/<id>/`, replaced atomically on every change."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def workdir(self, name: str) -> Path:
        """The directory of the guest the runtime knows as `name` (a record's `name`)."""
        return self.root / name

    def save(self, record: SandboxRecord) -> None:
        workdir = self.workdir(record.name)
        workdir.mkdir(parents=True, exist_ok=True)
        tmp = workdir / "state.json.tmp"
        with tmp.open("w") as f:
            json.dump(asdict(record), f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(workdir / "state.json")

    def load_all(self) -> list[SandboxRecord]:
        known = {f.name for f in fields(SandboxRecord)}
        records = []
        for path in sorted(self.root.glob("*/state.json")):
            try:
                raw: dict[str, Any] = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            records.append(SandboxRecord(**{k: v for k, v in raw.items() if k in known}))
        return records
