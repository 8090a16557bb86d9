"""At agent start: re-adopt the capsules that outlived the previous agent, and report the ones that did not.

The previous agent may have died half-way through a pause, a checkpoint or a resume: each capsule is found
running, or paused with its state intact (its record set to say so), or it is gone, and its record says why.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from .envd_client import EnvdClient
from .errors import AgentError
from .layout import TemplateDir
from .network import Network, Slot
from .pausing import Pauser
from .registry import Registry, Sandbox
from .revival import Revival
from .runtimes.base import Runtime, RuntimeState
from .state import PausedMode, SandboxRecord, SandboxStatus

log = logging.getLogger(__name__)


class Recovery:
    def __init__(
        self, runtime: Runtime, network: Network, registry: Registry, pauser: Pauser, revival: Revival
    ) -> None:
        self.runtime = runtime
        self.network = network
        self.registry = registry
        self.pauser = pauser
        self.revival = revival

    async def run(self) -> list[SandboxRecord]:
        """Re-adopt what lives on; keep a tombstone of the rest (their guests and slots released). Answers the
        records of the capsules re-adopted."""
        live: list[SandboxRecord] = []
        lost: list[SandboxRecord] = []
        for record in self.registry.records.load_all():
            if record.runtime != self.runtime.name:
                log.warning(
                    "capsule %s belongs to runtime %s, not %s; leaving it",
                    record.sandbox_id,
                    record.runtime,
                    self.runtime.name,
                )
                continue
            state = await self.runtime.state(record.name)
            checkpoint = TemplateDir(Path(record.snapshotting)).checkpoint_dir if record.snapshotting else None
            if checkpoint is not None and (checkpoint.image.exists() or checkpoint.partial_image.exists()):
                # Its checkpoint was asked for: it ends the guest, now or (a request waiting at a frozen gVisor
                # sandbox) once thawed. Given up, and started again from its disk below.
                state = RuntimeState.STOPPED
            elif record.snapshotting and state is RuntimeState.FROZEN:  # frozen for a snapshot, not by a pause
                state = await self._thaw(record)
            netns_alive = Slot(record.slot).guest.netns_path.exists() and self.network.owns(record.slot)
            if netns_alive and self._settle(record, state):
                if state is RuntimeState.FROZEN:  # the previous agent may have died half-way through a freeze
                    await self.runtime.freeze(record.name)
                live.append(record)
                continue
            if record.status is not SandboxStatus.ERROR:
                record.status = SandboxStatus.ERROR
                record.error = (
                    "the capsule stopped while the host agent was not running"
                    if netns_alive or state is not RuntimeState.RUNNING
                    else "the capsule's network namespace was removed"
                )
                self.registry.records.save(record)
            self.registry.bury(record)
            lost.append(record)
        await self.network.prepare_host({r.slot for r in live})
        running = []
        for record in live:
            slot = self.network.claim(record.slot)
            sandbox = Sandbox(record, slot, EnvdClient(slot.host_ip), time.monotonic())
            self.registry.add(sandbox)
            if record.status is SandboxStatus.RUNNING:
                running.append(sandbox)
            elif record.checkpointed:  # the previous agent may have died before giving its address back
                await self.network.readdress(slot)
            elif record.checkpoint_pending:
                self.pauser.schedule_checkpoint(record.sandbox_id, self.pauser.checkpoint_after_sec)
            log.info("re-adopted capsule %s (%s)", record.sandbox_id, record.status)
        await asyncio.gather(*(self.pauser.finish_resume(sandbox) for sandbox in running))
        for record in lost:
            await self.registry.release(record, Slot(record.slot), keep_record=True)
        for record in live + lost:
            if record.snapshotting:
                await self._settle_snapshot(record)
        return live + [r for r in lost if r.status is SandboxStatus.RUNNING]

    async def _settle_snapshot(self, record: SandboxRecord) -> None:
        """A snapshot the previous agent died in: its half-made template removed; the capsule, if its guest
        went with the checkpoint, started again from its disk (its files; its processes are gone)."""
        await self.revival.forget_snapshot(record)
        if record.status is not SandboxStatus.ERROR:
            log.warning("capsule %s: its snapshot was cut short; it is %s", record.sandbox_id, record.status)
            return  # found running, or frozen (then paused)
        try:
            await self.revival.revive(record)
            log.warning("capsule %s: its snapshot was cut short; started again from its disk", record.sandbox_id)
        except AgentError as exc:
            record.error = f"the capsule did not come back after a snapshot cut short: {exc.message}"
            self.registry.records.save(record)
            log.warning("capsule %s: %s", record.sandbox_id, record.error)

    async def _thaw(self, record: SandboxRecord) -> RuntimeState:
        """A guest a snapshot froze, running again; one that cannot be (its checkpoint cut short in the middle)
        is given up, and started again from its disk below."""
        try:
            await self.runtime.thaw(record.name)
        except AgentError as exc:
            log.warning("capsule %s: not thawed after a snapshot cut short: %s", record.sandbox_id, exc.message)
            return RuntimeState.STOPPED
        return RuntimeState.RUNNING

    def _settle(self, record: SandboxRecord, state: RuntimeState) -> bool:
        """Where a capsule found at start really is: running, or paused with its state intact (the record is
        set to say so). False: it is gone. A guest frozen by a pause that was never recorded is recorded
        paused."""
        if record.status not in (SandboxStatus.RUNNING, SandboxStatus.PAUSED):
            return False  # a create cut short, or a capsule already lost
        checkpointed = self.registry.records.capsule(record).checkpoint.complete()
        if state is RuntimeState.RUNNING:  # whatever the record says: a resume finished, a pause never began
            record.set_running()
        elif state is RuntimeState.FROZEN:
            if record.paused_mode is not PausedMode.FROZEN:
                record.set_paused(PausedMode.FROZEN)
        elif record.status is SandboxStatus.PAUSED and checkpointed:  # the checkpoint was written, not recorded
            record.set_paused(PausedMode.CHECKPOINT)
        else:
            return False
        self.registry.records.save(record)
        return True
