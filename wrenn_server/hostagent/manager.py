"""The sandbox manager: lifecycle of every capsule on this host, and the way to its envd."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wrenn_server.proto.envd import ProcessRef, StartRequest

from .checkpoints import quiesce, save_template
from .envd_client import EnvdClient, ProcessEvent
from .errors import AgentError, Conflict, InvalidArgument, NotFound, RuntimeFailure, WrongState
from .metrics import Sampler
from .network import Network, Slot
from .pool import Key, Warm, WarmPool
from .runtimes.base import (
    CHECKPOINT_IMAGE,
    Runtime,
    RuntimeState,
    SandboxSpec,
    Usage,
    template_checkpoint,
    template_runtime,
)
from .state import RecordStore, SandboxRecord
from .storage import DELETED_FILE, MINIMAL_TEMPLATE, PLATFORM_TEAM, Storage

log = logging.getLogger(__name__)

ENVD_BOOT_TIMEOUT = 60.0
REAP_EVERY = 2.0
_CONSOLE_CAUSES = ("Kernel panic", "BUG:", "Oops:", "Out of memory")


@dataclass(frozen=True)
class CreateRequest:
    sandbox_id: str
    template: str
    template_id: str
    team_id: str
    vcpus: int
    memory_mb: int
    disk_size_mb: int
    timeout_sec: int
    default_user: str
    default_env: dict[str, str]


@dataclass
class Sandbox:
    record: SandboxRecord
    slot: Slot
    envd: EnvdClient
    last_active: float
    start: str = ""  # how it came up: pool (a warm guest), restore (a checkpoint) or boot

    def touch(self) -> None:
        self.last_active = time.monotonic()


def _check_size(req: CreateRequest) -> None:
    """A size this host can give at all (whether it has room now is the scheduler's business)."""
    cores = os.cpu_count() or 1
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    if not 1 <= req.vcpus <= cores:
        raise InvalidArgument(f"vcpus must be between 1 and {cores} (this host's CPUs), not {req.vcpus}")
    if not 128 <= req.memory_mb <= memory_mb:
        raise InvalidArgument(
            f"memory_mb must be between 128 and {memory_mb} (this host's memory), not {req.memory_mb}"
        )
    if req.disk_size_mb < 0:
        raise InvalidArgument("disk_size_mb must not be negative")


class SandboxManager:
    def __init__(
        self,
        runtime: Runtime,
        network: Network,
        storage: Storage,
        checkpoint_after_sec: float = 10.0,
        pool_size: int = 1,
        pool_min_free_mb: int = 2048,
    ) -> None:
        self.runtime = runtime
        self.checkpoint_after_sec = checkpoint_after_sec
        self._checkpoints: dict[str, asyncio.Task[None]] = {}
        self.auto_paused: set[str] = set()  # paused for inactivity since this agent started
        self._reaper: asyncio.Task[None] | None = None
        self.network = network
        self.storage = storage
        self.records = RecordStore(storage.sandboxes)
        self.pool = WarmPool(runtime, network, self.records, pool_size, pool_min_free_mb)
        self._sandboxes: dict[str, Sandbox] = {}
        self._tombstones: dict[str, SandboxRecord] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.sampler = Sampler(self._usage, self._running_vcpus, self._disk_used_now)

    def _running_vcpus(self) -> dict[str, int]:
        return {sid: s.record.vcpus for sid, s in self._sandboxes.items() if s.record.status == "running"}

    def _disk_used_now(self, sandbox_id: str) -> int:
        sandbox = self._sandboxes.get(sandbox_id)
        return 0 if sandbox is None else self.storage.disk_used(self.records.workdir(sandbox.record.name))

    async def _usage(self, sandbox_id: str) -> Usage | None:
        sandbox = self._sandboxes.get(sandbox_id)
        return None if sandbox is None else await self.runtime.usage(sandbox.record.name)

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    async def start(self) -> None:
        """Re-adopt the capsules that outlived the previous agent; report the ones that did not."""
        live: list[SandboxRecord] = []
        for record in self.records.load_all():
            if record.runtime != self.runtime.name:
                log.warning(
                    "capsule %s belongs to runtime %s, not %s; leaving it",
                    record.sandbox_id,
                    record.runtime,
                    self.runtime.name,
                )
                continue
            state = await self.runtime.state(record.name)
            netns_alive = Slot(record.slot).guest.netns_path.exists() and self.network.owns(record.slot)
            if netns_alive and self._settle(record, state):
                live.append(record)
                continue
            if record.status != "error":
                record.status = "error"
                record.error = (
                    "the capsule stopped while the host agent was not running"
                    if netns_alive or state is not RuntimeState.RUNNING
                    else "the capsule's network namespace was removed"
                )
                self.records.save(record)
            self._tombstones[record.sandbox_id] = record
        await self.network.prepare_host({r.slot for r in live})
        running = []
        for record in live:
            slot = self.network.claim(record.slot)
            sandbox = Sandbox(record, slot, EnvdClient(slot.host_ip), time.monotonic())
            self._sandboxes[record.sandbox_id] = sandbox
            if record.status == "running":
                running.append(sandbox)
            elif record.paused_mode == "checkpoint":  # the previous agent may have died before giving it back
                await self.network.readdress(slot)
            elif record.checkpoint_pending:
                self._schedule_checkpoint(record.sandbox_id, self.checkpoint_after_sec)
            log.info("re-adopted capsule %s (%s)", record.sandbox_id, record.status)
        await asyncio.gather(*(self._finish_resume(sandbox) for sandbox in running))
        for record in self._tombstones.values():
            await self._release(record, Slot(record.slot), keep_record=True)
        self.storage.collect_unused_templates({r.template_dir for r in live})
        self.network.refill()
        self.sampler.start()
        try:
            default: Path | None = self.storage.template_dir(PLATFORM_TEAM, MINIMAL_TEMPLATE, "minimal")
        except NotFound:
            default = None
        await self.pool.start(default)
        self._reaper = asyncio.create_task(self._reap_idle())

    async def _reap_idle(self) -> None:
        """Pause capsules idle for longer than their `timeout_sec` (0: never)."""
        while True:
            await asyncio.sleep(REAP_EVERY)
            now = time.monotonic()
            await self._reap_exited()
            for sandbox_id, sandbox in list(self._sandboxes.items()):
                record = sandbox.record
                if record.status != "running" or record.timeout_sec <= 0:
                    continue
                if now - sandbox.last_active < record.timeout_sec:
                    continue
                try:
                    await self.pause(sandbox_id)
                except AgentError as exc:
                    log.warning("auto-pause of %s failed: %s", sandbox_id, exc.message)
                    continue
                self.auto_paused.add(sandbox_id)
                log.info("capsule %s paused after %d s without activity", sandbox_id, record.timeout_sec)

    async def _reap_exited(self) -> None:
        """A guest that stopped on its own (crash, panic, killed) ends the capsule in `error`, saying why."""
        for sandbox_id, sandbox in list(self._sandboxes.items()):
            record = sandbox.record
            if record.status == "paused" and record.paused_mode == "checkpoint":
                continue
            if record.status not in ("running", "paused") or not self.runtime.exited(record.name):
                continue
            async with self._lock(sandbox_id):
                if self._sandboxes.get(sandbox_id) is not sandbox or not self.runtime.exited(record.name):
                    continue  # destroyed, checkpointed or restarted meanwhile
                if record.status == "paused" and record.paused_mode == "checkpoint":
                    continue
                reason = f"the capsule's guest stopped on its own{self._console_tail(record)}"
                log.warning("capsule %s: %s", sandbox_id, reason)
                await sandbox.envd.close()
                await self._release(record, sandbox.slot, keep_record=True)  # before anyone is told it is gone
                self._lost(record, reason)

    async def close(self) -> None:
        await self.pool.close()
        if self._reaper is not None:
            self._reaper.cancel()
        for task in self._checkpoints.values():
            task.cancel()  # the next agent schedules them again (the records say so)
        await self.sampler.stop()
        await self.network.close()
        for sandbox in self._sandboxes.values():
            await sandbox.envd.close()

    def _settle(self, record: SandboxRecord, state: RuntimeState) -> bool:
        """Where a capsule found at start really is, when the previous agent died half-way through a pause,
        a checkpoint or a resume: running, or paused with its state intact (the record is set to say so).
        False: it is gone. A guest frozen by a pause that was never recorded is recorded paused."""
        if record.status not in ("running", "paused"):  # a create cut short, or a capsule already lost
            return False
        checkpointed = (self._checkpoint_dir(record) / CHECKPOINT_IMAGE).is_file()
        if state is RuntimeState.RUNNING:  # whatever the record says: a resume finished, a pause never began
            record.status, record.paused_mode, record.checkpoint_pending = "running", "", False
        elif state is RuntimeState.PAUSED:
            if record.paused_mode != "frozen":
                record.status, record.paused_mode, record.checkpoint_pending = "paused", "frozen", False
        elif record.status == "paused" and checkpointed:  # the checkpoint was written; its record was not
            record.paused_mode, record.checkpoint_pending = "checkpoint", False
        else:
            return False
        self.records.save(record)
        return True

    async def _finish_resume(self, sandbox: Sandbox) -> None:
        """Port forwarding on again (a pause may have stopped it before dying) and the checkpoint gone."""
        try:
            await sandbox.envd.forward_again()
        except AgentError as exc:
            log.warning("capsule %s: port forwarding not restarted: %s", sandbox.record.sandbox_id, exc.message)
        await asyncio.to_thread(shutil.rmtree, self._checkpoint_dir(sandbox.record), True)

    def _checkpoint_dir(self, record: SandboxRecord) -> Path:
        return self.records.workdir(record.name) / "checkpoint"

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
        if sandbox.record.status != "running":
            raise WrongState(f"capsule {sandbox_id} is {sandbox.record.status}")
        return sandbox

    def active(self, sandbox_id: str) -> EnvdClient:
        sandbox = self.get(sandbox_id)
        sandbox.touch()
        return sandbox.envd

    def list(self) -> list[SandboxRecord]:
        return [s.record for s in self._sandboxes.values()] + list(self._tombstones.values())

    async def create(self, req: CreateRequest) -> Sandbox:
        """A warm guest when the pool has one; else a restore of the template's (prepared) checkpoint; else
        a boot, while the pool prepares that checkpoint for the next capsule."""
        _check_size(req)
        async with self._lock(req.sandbox_id):
            if req.sandbox_id in self._sandboxes:
                return self._sandboxes[req.sandbox_id]
            template_dir = self.storage.template_dir(req.team_id, req.template_id, req.template)
            made_by = template_runtime(template_dir)
            if made_by not in (None, self.runtime.name):
                raise WrongState(
                    f"template {req.template!r} holds a {made_by} guest, and this host runs {self.runtime.name} "
                    "capsules: create it on a host with that runtime, or snapshot a capsule of this one"
                )
            key = Key(template_dir, req.vcpus, req.memory_mb, req.disk_size_mb)
            warm = self.pool.take(key)
            if warm is not None:
                sandbox = await self._adopt(req, warm)
            else:
                sandbox = await self._start(req, self.pool.source(key) or template_dir)
            self._sandboxes[req.sandbox_id] = sandbox
        self.pool.want(key)
        self.network.refill()
        return sandbox

    def _record(self, req: CreateRequest, slot: int, template_dir: Path, runtime_id: str = "") -> SandboxRecord:
        return SandboxRecord(
            sandbox_id=req.sandbox_id,
            runtime=self.runtime.name,
            slot=slot,
            template=req.template,
            template_id=req.template_id,
            team_id=req.team_id,
            template_dir=str(template_dir),
            vcpus=req.vcpus,
            memory_mb=req.memory_mb,
            disk_size_mb=req.disk_size_mb,
            timeout_sec=req.timeout_sec,
            default_user=req.default_user,
            default_env=dict(req.default_env),
            created_at=time.time(),
            runtime_id=runtime_id,
        )

    async def _adopt(self, req: CreateRequest, warm: Warm) -> Sandbox:
        record = self._record(req, warm.slot.index, warm.template_dir, runtime_id=warm.name)
        try:
            await warm.envd.init(record.default_user, record.default_env, req.sandbox_id)
        except BaseException as exc:
            await warm.envd.close()
            await self._release(record, warm.slot, keep_record=False)
            if isinstance(exc, asyncio.CancelledError):
                raise
            reason = exc.message if isinstance(exc, AgentError) else repr(exc)
            raise RuntimeFailure(f"capsule failed to start: {reason}") from exc
        record.status = "running"
        self.records.save(record)
        return Sandbox(record, warm.slot, warm.envd, time.monotonic(), start="pool")

    async def _start(self, req: CreateRequest, template_dir: Path) -> Sandbox:
        slot = await self.network.acquire()
        record = self._record(req, slot.index, template_dir)
        self.records.save(record)
        envd = EnvdClient(slot.host_ip)
        restored = template_checkpoint(template_dir) is not None
        try:
            # A new slot's interface has the guest's address (only a runsc that adopted it took it away).
            await self.runtime.create(self._spec(record, slot))
            # Also turns port forwarding back on: checkpoints are taken with it stopped.
            ready_by = time.monotonic() + ENVD_BOOT_TIMEOUT
            await self._while_alive(
                record.name, envd.init(record.default_user, record.default_env, req.sandbox_id, ready_by=ready_by)
            )
        except BaseException as exc:
            await envd.close()
            reason = exc.message if isinstance(exc, AgentError) else repr(exc)
            console = self._console_tail(record)
            await self._release(record, slot, keep_record=False)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise RuntimeFailure(f"capsule failed to start: {reason}{console}") from exc
        record.status = "running"
        self.records.save(record)
        return Sandbox(record, slot, envd, time.monotonic(), start="restore" if restored else "boot")

    async def _while_alive(self, name: str, waiting: Coroutine[Any, Any, object]) -> None:
        """Wait for a guest coming up, but no longer than it lives: one that dies while booting (a kernel
        panic, a broken disk) fails the create at once, not after the whole boot timeout."""
        task = asyncio.ensure_future(waiting)
        try:
            while not task.done():
                await asyncio.wait([task], timeout=0.25)
                if not task.done() and self.runtime.exited(name):
                    raise RuntimeFailure("the guest stopped while it was starting")
            task.result()
        finally:
            task.cancel()

    async def pause(self, sandbox_id: str) -> Sandbox:
        """Freeze the capsule at once; checkpoint it to disk (memory released) `checkpoint_after_sec` later.
        One that holds a network connection stays frozen unless its runtime checkpoints connections: under
        runsc 20221219 the checkpoint would fail, and take the capsule with it. Paused already: nothing to do."""
        async with self._lock(sandbox_id):
            sandbox = self.lookup(sandbox_id)
            if sandbox.record.status == "paused":
                return sandbox
            sandbox = self.get(sandbox_id)
            record = sandbox.record
            connections = await quiesce(self.runtime, sandbox.envd, self.network, sandbox.slot)
            await self.runtime.freeze(record.name)
            if connections:
                log.info("capsule %s has TCP connections %s: it stays frozen in memory", sandbox_id, connections)
            record.status, record.paused_mode, record.checkpoint_pending = "paused", "frozen", not connections
            self.records.save(record)
            if record.checkpoint_pending:
                self._schedule_checkpoint(sandbox_id, self.checkpoint_after_sec)
            return sandbox

    def _schedule_checkpoint(self, sandbox_id: str, delay: float) -> None:
        old = self._checkpoints.pop(sandbox_id, None)
        if old is not None:
            old.cancel()
        self._checkpoints[sandbox_id] = asyncio.create_task(self._checkpoint(sandbox_id, delay))

    async def _checkpoint(self, sandbox_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        async with self._lock(sandbox_id):
            self._checkpoints.pop(sandbox_id, None)
            sandbox = self._sandboxes.get(sandbox_id)
            if sandbox is None or sandbox.record.status != "paused" or not sandbox.record.checkpoint_pending:
                return
            record = sandbox.record
            checkpoint = self._checkpoint_dir(record)
            await asyncio.to_thread(shutil.rmtree, checkpoint, True)
            try:
                await self.runtime.pause(record.name, checkpoint)
            except AgentError as exc:
                if await self.runtime.state(record.name) is RuntimeState.PAUSED:
                    log.warning("capsule %s stays frozen: its checkpoint failed: %s", sandbox_id, exc.message)
                    record.checkpoint_pending = False
                    self.records.save(record)
                else:
                    self._lost(record, f"the checkpoint failed: {exc.message}")
                return
            record.paused_mode, record.checkpoint_pending = "checkpoint", False
            self.records.save(record)
            # Ready for the restore now rather than on the resume's clock: runsc took the address away.
            await self.network.readdress(sandbox.slot)
            log.info("capsule %s checkpointed; its memory is released", sandbox_id)

    async def resume(self, sandbox_id: str) -> Sandbox:
        """Continue a paused capsule where it stopped; running already: nothing to do."""
        pending = self._checkpoints.pop(sandbox_id, None)
        if pending is not None:
            pending.cancel()
        async with self._lock(sandbox_id):
            sandbox = self.lookup(sandbox_id)
            record = sandbox.record
            if record.status == "running":
                return sandbox
            if record.status != "paused":
                raise WrongState(f"capsule {sandbox_id} is {record.status}")
            if record.paused_mode == "frozen":
                await self.runtime.thaw(record.name)
            else:
                checkpoint = self._checkpoint_dir(record)  # its address was given back after the checkpoint
                try:
                    if not (checkpoint / CHECKPOINT_IMAGE).is_file():
                        raise RuntimeFailure(f"its checkpoint {checkpoint / CHECKPOINT_IMAGE} is missing")
                    await self.runtime.resume(self._spec(record, sandbox.slot), checkpoint)
                    await sandbox.envd.forward_again(ready_by=time.monotonic() + ENVD_BOOT_TIMEOUT)
                except (AgentError, OSError) as exc:
                    # Its state is gone or unreadable: the capsule cannot continue, and says why.
                    reason = exc.message if isinstance(exc, AgentError) else str(exc)
                    self._lost(record, f"the capsule could not be restored: {reason}")
                    raise RuntimeFailure(record.error) from exc
            if record.paused_mode == "frozen":
                await sandbox.envd.forward_again()
            record.status, record.paused_mode, record.checkpoint_pending = "running", "", False
            self.auto_paused.discard(sandbox_id)
            self.records.save(record)
            await asyncio.to_thread(shutil.rmtree, self._checkpoint_dir(record), True)
            sandbox.touch()
            return sandbox

    async def snapshot(self, sandbox_id: str, team_id: str, template_id: str) -> Path:
        """A template of the running capsule as it is now: its files over its template's, and its guest state
        (memory, processes); capsules created from it continue from there. The capsule itself goes on after
        a short freeze (it is checkpointed, then restored from that checkpoint)."""
        async with self._lock(sandbox_id):
            sandbox = self.get(sandbox_id)
            record = sandbox.record
            if connections := await quiesce(self.runtime, sandbox.envd, self.network, sandbox.slot):
                await sandbox.envd.forward_again()
                raise Conflict(
                    f"the capsule holds network connections ({', '.join(connections)}), which a snapshot cannot "
                    "keep: close them, or wait a minute for closed ones to expire"
                )
            target = self.storage.team_template(team_id, template_id)
            staging = target.with_name(f".staging-{template_id}")
            await asyncio.to_thread(shutil.rmtree, staging, True)
            about = {"base": record.template_dir, "source": sandbox_id}
            try:
                await save_template(self.runtime, record.name, self.records.workdir(record.name), staging, about)
            except AgentError as exc:
                self._lost(record, f"the snapshot failed: {exc.message}")
                raise RuntimeFailure(record.error) from exc
            if target.exists():  # overwrite: capsules made from the old one keep it until they go
                self.pool.drop(target)
                old = target.with_name(f".replaced-{template_id}-{int(time.time() * 1000)}")
                target.rename(old)
                (old / DELETED_FILE).touch()
            staging.rename(target)
            try:
                await self.network.readdress(sandbox.slot)
                await self.runtime.resume(self._spec(record, sandbox.slot), target / "checkpoint")
                await sandbox.envd.forward_again(ready_by=time.monotonic() + ENVD_BOOT_TIMEOUT)
            except AgentError as exc:
                self._lost(record, f"the capsule did not come back after its snapshot: {exc.message}")
                raise RuntimeFailure(record.error) from exc
            sandbox.touch()
            return target

    def _lost(self, record: SandboxRecord, reason: str) -> None:
        record.status, record.error = "error", reason
        self.records.save(record)
        self._sandboxes.pop(record.sandbox_id, None)
        self._tombstones[record.sandbox_id] = record

    async def delete_template(self, team_id: str, template_id: str) -> None:
        """Removed at once when nothing uses it; otherwise marked, and removed once its last capsule is gone."""
        target = self.storage.team_template(team_id, template_id)
        if not target.exists():
            return
        (target / DELETED_FILE).touch()
        self.pool.drop(target)
        await asyncio.to_thread(self.storage.collect_unused_templates, self._templates_in_use())

    def _templates_in_use(self) -> set[str]:
        return (
            {s.record.template_dir for s in self._sandboxes.values()}
            | {r.template_dir for r in self._tombstones.values()}
            | self.pool.templates_in_use()
        )

    async def destroy(self, sandbox_id: str) -> None:
        pending = self._checkpoints.pop(sandbox_id, None)
        if pending is not None:
            pending.cancel()
        async with self._lock(sandbox_id):
            sandbox = self._sandboxes.pop(sandbox_id, None)
            self.sampler.forget(sandbox_id)
            if sandbox is not None:
                await sandbox.envd.close()
                await self._release(sandbox.record, sandbox.slot, keep_record=False)
            elif sandbox_id in self._tombstones:
                record = self._tombstones.pop(sandbox_id)
                await self._release(record, Slot(record.slot), keep_record=False)
            else:
                raise NotFound(f"capsule {sandbox_id} not found on this host")
        self._locks.pop(sandbox_id, None)
        await asyncio.to_thread(self.storage.collect_unused_templates, self._templates_in_use())

    async def _release(self, record: SandboxRecord, slot: Slot, *, keep_record: bool) -> None:
        workdir = self.records.workdir(record.name)
        if not record.released:
            try:
                await self.runtime.destroy(record.name, workdir)
            finally:
                # Once only: the slot's number may belong to another capsule by the next call.
                await self.network.teardown(slot)
        if keep_record:
            record.released = True
            self.records.save(record)
            return
        await asyncio.to_thread(shutil.rmtree, workdir, True)

    def _spec(self, record: SandboxRecord, slot: Slot) -> SandboxSpec:
        return SandboxSpec(
            sandbox_id=record.name,
            template_dir=Path(record.template_dir),
            workdir=self.records.workdir(record.name),
            vcpus=record.vcpus,
            memory_mb=record.memory_mb,
            disk_size_mb=record.disk_size_mb,
            network=slot.guest,
        )

    def _console_tail(self, record: SandboxRecord) -> str:
        try:
            text = (self.records.workdir(record.name) / "console.log").read_bytes()[-16384:].decode(errors="replace")
        except OSError:
            return ""
        text = text.replace("\r\n", "\n").strip()
        if not text:
            return ""
        tail = text[-1500:]
        # A panic's cause comes before its stack trace, which alone would fill the tail.
        causes = [line for line in text.splitlines() if any(mark in line for mark in _CONSOLE_CAUSES)]
        head = "\n".join(line for line in causes[-3:] if line not in tail)
        return f"\nconsole:\n{head}\n...\n{tail}" if head else f"\nconsole:\n{tail}"

    async def disk_used(self, sandbox_id: str) -> int:
        return await asyncio.to_thread(self.storage.disk_used, self.records.workdir(self.record_of(sandbox_id).name))

    async def events(self, sandbox_id: str, req: StartRequest | ProcessRef) -> AsyncIterator[ProcessEvent]:
        envd = self.active(sandbox_id)
        async for event in envd.stream(req):
            yield event
