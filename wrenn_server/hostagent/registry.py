"""The capsules this host holds: the live ones, the tombstones of those that ended, and a lock per capsule."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from .envd_client import EnvdClient
from .errors import NotFound, WrongState
from .launcher import Guest, Launcher, Size
from .network import Slot
from .state import RecordStore, SandboxRecord, SandboxStatus


class Start(StrEnum):
    """How a new capsule came up (told to the control plane in its metadata)."""

    POOL = "pool"  # a warm guest
    RESTORE = "restore"  # a checkpoint restored
    BOOT = "boot"
    READOPTED = ""  # found again at agent start


@dataclass
class Sandbox:
    record: SandboxRecord
    slot: Slot
    envd: EnvdClient
    last_active: float
    start: Start = Start.READOPTED

    def touch(self) -> None:
        self.last_active = time.monotonic()

    @property
    def guest(self) -> Guest:
        record = self.record
        return Guest(record.name, self.template_dir, self.slot, self.envd)

    @property
    def size(self) -> Size:
        return Size(self.record.vcpus, self.record.memory_mb, self.record.disk_size_mb)

    @property
    def template_dir(self) -> Path:
        return Path(self.record.template_dir)


class Registry:
    def __init__(self, records: RecordStore, launcher: Launcher) -> None:
        self.records = records
        self.launcher = launcher
        self._sandboxes: dict[str, Sandbox] = {}
        self._tombstones: dict[str, SandboxRecord] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    def forget_lock(self, sandbox_id: str) -> None:
        self._locks.pop(sandbox_id, None)

    def add(self, sandbox: Sandbox) -> None:
        """A live capsule (a tombstone of it, started again from its disk, is live again)."""
        self._tombstones.pop(sandbox.record.sandbox_id, None)
        self._sandboxes[sandbox.record.sandbox_id] = sandbox

    def bury(self, record: SandboxRecord) -> None:
        """Keep the record of a capsule that ended (its status `error`), so it is listed, saying why."""
        self._sandboxes.pop(record.sandbox_id, None)
        self._tombstones[record.sandbox_id] = record

    def lost(self, record: SandboxRecord, reason: str) -> None:
        """The capsule ended in `error`, for `reason`."""
        record.status, record.error = SandboxStatus.ERROR, reason
        self.records.save(record)
        self.bury(record)

    def find(self, sandbox_id: str) -> Sandbox | None:
        return self._sandboxes.get(sandbox_id)

    def live(self) -> Iterator[Sandbox]:
        """A snapshot of the live capsules (safe to change the registry while iterating)."""
        return iter(list(self._sandboxes.values()))

    def tombstones(self) -> list[SandboxRecord]:
        return list(self._tombstones.values())

    def pop(self, sandbox_id: str) -> Sandbox | SandboxRecord | None:
        """Remove the capsule from the registry: its live entry, or else its tombstone."""
        sandbox = self._sandboxes.pop(sandbox_id, None)
        return sandbox if sandbox is not None else self._tombstones.pop(sandbox_id, None)

    def lookup(self, sandbox_id: str) -> Sandbox:
        """The capsule in whatever state it is."""
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None:
            if sandbox_id in self._tombstones:
                raise WrongState(f"capsule {sandbox_id} is not running: {self._tombstones[sandbox_id].error}")
            raise NotFound(f"capsule {sandbox_id} not found on this host")
        return sandbox

    def record_of(self, sandbox_id: str) -> SandboxRecord:
        """The capsule's record, tombstones (capsules that failed) included."""
        if sandbox_id in self._tombstones:
            return self._tombstones[sandbox_id]
        return self.lookup(sandbox_id).record

    def get(self, sandbox_id: str) -> Sandbox:
        """The capsule, which must be running."""
        sandbox = self.lookup(sandbox_id)
        if sandbox.record.status is not SandboxStatus.RUNNING:
            raise WrongState(f"capsule {sandbox_id} is {sandbox.record.status}")
        return sandbox

    def list(self) -> list[SandboxRecord]:
        return [s.record for s in self._sandboxes.values()] + list(self._tombstones.values())

    def running_vcpus(self) -> dict[str, int]:
        return {sid: s.record.vcpus for sid, s in self._sandboxes.items() if s.record.status is SandboxStatus.RUNNING}

    def templates_in_use(self) -> set[str]:
        return {s.record.template_dir for s in self._sandboxes.values()} | {
            r.template_dir for r in self._tombstones.values()
        }

    async def release(self, record: SandboxRecord, slot: Slot, *, keep_record: bool) -> None:
        """The capsule's guest and slot gone (once), and its files too unless its record is kept (a tombstone)."""
        if not record.released:
            await self.launcher.stop(record.name, slot)
        if keep_record:
            record.released = True
            self.records.save(record)
            return
        await asyncio.to_thread(shutil.rmtree, self.records.capsule(record).path, True)
