"""Capsules whose guest ended, started again from their own disk (docs/lifecycle.md, "Every end keeps its files").

A capsule that ended in `error` (its guest killed, crashed, or lost with a restart) keeps its files: its record
is a tombstone and its working directory stays. Starting it again boots a new guest on that disk as it is (the
runtime's `cold` boot: no template checkpoint restored, the capsule's own files kept); its processes are gone.
The same settles a snapshot an agent died in the middle of: the capsule is back with its files, and the
half-made template is removed.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path

from .envd_client import EnvdClient
from .errors import WrongState
from .launcher import Guest, Launcher, Size
from .layout import is_staging
from .network import Network
from .registry import Registry, Sandbox, Start
from .state import SandboxRecord, SandboxStatus

log = logging.getLogger(__name__)


class Revival:
    def __init__(self, network: Network, registry: Registry, launcher: Launcher) -> None:
        self.network = network
        self.registry = registry
        self.launcher = launcher

    async def revive(self, record: SandboxRecord) -> Sandbox:
        """The ended capsule (a tombstone, its guest and slot released) running again on its disk, with a new
        guest and slot. A failure keeps it a tombstone, its files kept, and raises `RuntimeFailure`."""
        if record.status is not SandboxStatus.ERROR or not record.released:
            raise WrongState(f"capsule {record.sandbox_id} is {record.status}, not ended")
        slot = await self.network.acquire()
        guest = Guest(record.name, Path(record.template_dir), slot, EnvdClient(slot.host_ip))

        async def ready(envd: EnvdClient, deadline: float) -> None:
            await envd.init(record.default_user, record.default_env, record.sandbox_id, ready_by=deadline)

        await self.launcher.reboot(guest, Size(record.vcpus, record.memory_mb, record.disk_size_mb), ready)
        log.info("capsule %s started again from its disk (it ended: %s)", record.sandbox_id, record.error)
        record.slot, record.released, record.error = slot.index, False, ""
        record.set_running()
        self.registry.records.save(record)
        sandbox = Sandbox(record, slot, guest.envd, time.monotonic(), start=Start.BOOT)
        self.registry.add(sandbox)
        return sandbox

    async def forget_snapshot(self, record: SandboxRecord) -> None:
        """A snapshot the previous agent died in: its half-made template removed (a finished one, renamed into
        place, is kept), and the record no longer says it is under way."""
        staging = Path(record.snapshotting)
        if is_staging(staging):
            log.info("capsule %s: removing the template its cut-short snapshot left, %s", record.sandbox_id, staging)
            await asyncio.to_thread(shutil.rmtree, staging, True)
        record.snapshotting = ""
        self.registry.records.save(record)
