"""The agent's watch over its capsules: guests that stopped on their own end their capsule; idle ones pause."""

from __future__ import annotations

import asyncio
import logging

from .launcher import Launcher
from .pausing import Pauser
from .registry import Registry, Sandbox
from .runtimes.base import Runtime
from .state import SandboxRecord, SandboxStatus

log = logging.getLogger(__name__)

REAP_EVERY = 2.0


class Reaper:
    def __init__(self, runtime: Runtime, registry: Registry, launcher: Launcher, pauser: Pauser) -> None:
        self.runtime = runtime
        self.registry = registry
        self.launcher = launcher
        self.pauser = pauser
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(REAP_EVERY)
            await self.reap_exited()
            await self.pauser.pause_idle()

    async def reap_exited(self) -> None:
        """A guest that stopped on its own (crash, panic, killed) ends the capsule in `error`, saying why."""
        for sandbox in self.registry.live():
            if _watched(sandbox.record) and self.runtime.exited(sandbox.record.name):
                await self.reap(sandbox)

    async def reap(self, sandbox: Sandbox) -> None:
        """The capsule, whose guest stopped on its own, ends in `error` saying why; the calls under way on it
        fail at once with that reason."""
        record = sandbox.record
        sandbox_id = record.sandbox_id
        async with self.registry.lock(sandbox_id):
            if self.registry.find(sandbox_id) is not sandbox or not self.runtime.exited(record.name):
                return  # destroyed, checkpointed or restarted meanwhile
            if not _watched(record):
                return
            cause = self.runtime.end_cause(record.name)
            reason = f"the capsule's guest stopped on its own{f' ({cause})' if cause else ''}"
            reason += self.launcher.console_tail(record.name)
            log.warning("capsule %s: %s", sandbox_id, reason)
            await self.registry.release(record, sandbox.slot, keep_record=True)  # before anyone is told
            self.registry.lost(record, reason)
            sandbox.envd.end(reason)  # the calls under way fail now, naming the reason


def _watched(record: SandboxRecord) -> bool:
    """Whether the capsule has a guest that should be alive (a checkpointed one has none)."""
    return record.status in (SandboxStatus.RUNNING, SandboxStatus.PAUSED) and not record.checkpointed
