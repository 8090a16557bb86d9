"""Pause and resume (the API's words): a pause freezes the guest at once and checkpoints it to disk a little later;
a resume thaws it, or restores it from its checkpoint.

A capsule holding a network connection stays frozen unless its runtime checkpoints connections: under runsc
20221219 the checkpoint would fail, and take the capsule with it.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time

from .checkpoints import quiesce
from .errors import AgentError, RuntimeFailure, WrongState
from .launcher import Launcher
from .network import Network
from .registry import Registry, Sandbox
from .runtimes.base import Runtime, RuntimeState
from .state import PausedMode, SandboxStatus

log = logging.getLogger(__name__)


class Pauser:
    def __init__(
        self, runtime: Runtime, network: Network, registry: Registry, launcher: Launcher, checkpoint_after_sec: float
    ) -> None:
        self.runtime = runtime
        self.network = network
        self.registry = registry
        self.launcher = launcher
        self.checkpoint_after_sec = checkpoint_after_sec
        self.auto_paused: set[str] = set()  # paused for inactivity since this agent started
        self._checkpoints: dict[str, asyncio.Task[None]] = {}

    def close(self) -> None:
        for task in self._checkpoints.values():
            task.cancel()  # the next agent schedules them again (the records say so)

    def cancel_checkpoint(self, sandbox_id: str) -> None:
        pending = self._checkpoints.pop(sandbox_id, None)
        if pending is not None:
            pending.cancel()

    async def pause(self, sandbox_id: str) -> Sandbox:
        """Freeze the capsule at once; checkpoint it `checkpoint_after_sec` later (its memory released).
        Paused already: nothing to do."""
        async with self.registry.lock(sandbox_id):
            sandbox = self.registry.lookup(sandbox_id)
            if sandbox.record.status is SandboxStatus.PAUSED:
                return sandbox
            sandbox = self.registry.get(sandbox_id)
            record = sandbox.record
            connections = await quiesce(self.runtime, sandbox.envd, self.network, sandbox.slot, cut_open=False)
            await self.runtime.freeze(record.name)
            if connections:
                log.info("capsule %s has TCP connections %s: it stays frozen in memory", sandbox_id, connections)
            record.set_paused(PausedMode.FROZEN, checkpoint_pending=not connections)
            self.registry.records.save(record)
            if record.checkpoint_pending:
                self.schedule_checkpoint(sandbox_id, self.checkpoint_after_sec)
            return sandbox

    def schedule_checkpoint(self, sandbox_id: str, delay: float) -> None:
        self.cancel_checkpoint(sandbox_id)
        self._checkpoints[sandbox_id] = asyncio.create_task(self._checkpoint(sandbox_id, delay))

    async def _checkpoint(self, sandbox_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        async with self.registry.lock(sandbox_id):
            self._checkpoints.pop(sandbox_id, None)
            sandbox = self.registry.find(sandbox_id)
            if sandbox is None or sandbox.record.status is not SandboxStatus.PAUSED:
                return
            record = sandbox.record
            if not record.checkpoint_pending:
                return
            checkpoint = self.registry.records.capsule(record).checkpoint.path
            await asyncio.to_thread(shutil.rmtree, checkpoint, True)
            try:
                await self.runtime.checkpoint(record.name, checkpoint)
            except AgentError as exc:
                if await self.runtime.state(record.name) is RuntimeState.FROZEN:
                    log.warning("capsule %s stays frozen: its checkpoint failed: %s", sandbox_id, exc.message)
                    record.checkpoint_pending = False
                    self.registry.records.save(record)
                else:
                    self.registry.lost(record, f"the checkpoint failed: {exc.message}")
                return
            record.set_paused(PausedMode.CHECKPOINT)
            self.registry.records.save(record)
            # Ready for the restore now rather than on the resume's clock: runsc took the address away.
            await self.network.readdress(sandbox.slot)
            log.info("capsule %s checkpointed; its memory is released", sandbox_id)

    async def resume(self, sandbox_id: str) -> Sandbox:
        """Continue a paused capsule where it stopped; running already: nothing to do."""
        self.cancel_checkpoint(sandbox_id)
        async with self.registry.lock(sandbox_id):
            sandbox = self.registry.lookup(sandbox_id)
            record = sandbox.record
            if record.status is SandboxStatus.RUNNING:
                return sandbox
            if record.status is not SandboxStatus.PAUSED:
                raise WrongState(f"capsule {sandbox_id} is {record.status}")
            if record.paused_mode is PausedMode.FROZEN:
                await self.runtime.thaw(record.name)
                await sandbox.envd.forward_again()
            else:
                checkpoint = self.registry.records.capsule(record).checkpoint  # its address was given back already
                try:
                    if not checkpoint.complete():
                        raise RuntimeFailure(f"its checkpoint {checkpoint.image} is missing")
                    await self.launcher.restore(sandbox.guest, sandbox.size, checkpoint.path)
                except (AgentError, OSError) as exc:
                    # Its state is gone or unreadable: the capsule cannot continue, and says why.
                    reason = exc.message if isinstance(exc, AgentError) else str(exc)
                    self.registry.lost(record, f"the capsule could not be restored: {reason}")
                    raise RuntimeFailure(record.error) from exc
            record.set_running()
            self.auto_paused.discard(sandbox_id)
            self.registry.records.save(record)
            await self.drop_checkpoint(sandbox)
            sandbox.touch()
            return sandbox

    async def pause_idle(self) -> None:
        """Pause the capsules idle for longer than their `timeout_sec` (0: never)."""
        now = time.monotonic()
        for sandbox in self.registry.live():
            record = sandbox.record
            if record.status is not SandboxStatus.RUNNING or record.timeout_sec <= 0:
                continue
            if now - sandbox.last_active < record.timeout_sec:
                continue
            try:
                await self.pause(record.sandbox_id)
            except AgentError as exc:
                log.warning("auto-pause of %s failed: %s", record.sandbox_id, exc.message)
                continue
            self.auto_paused.add(record.sandbox_id)
            log.info("capsule %s paused after %d s without activity", record.sandbox_id, record.timeout_sec)

    async def drop_checkpoint(self, sandbox: Sandbox) -> None:
        await asyncio.to_thread(shutil.rmtree, self.registry.records.capsule(sandbox.record).checkpoint.path, True)

    async def finish_resume(self, sandbox: Sandbox) -> None:
        """After an agent died during a pause or a resume of a capsule found running: port forwarding on again
        (a pause may have stopped it before dying) and the checkpoint gone."""
        try:
            await sandbox.envd.forward_again()
        except AgentError as exc:
            log.warning("capsule %s: port forwarding not restarted: %s", sandbox.record.sandbox_id, exc.message)
        await self.drop_checkpoint(sandbox)
