"""The sandbox manager: the one entry to the lifecycle of every capsule on this host, for the gRPC service.

It creates and destroys capsules itself and hands the rest to the pieces it assembles:

    registry.Registry    the capsules held (live, tombstones) and a lock per capsule
    launcher.Launcher    starting guests, for creates and for the warm pool (pool.WarmPool) alike
    pausing.Pauser       pause (freeze now, checkpoint later) and resume (thaw, or restore)
    reaper.Reaper        guests that stopped on their own; capsules idle for too long
    recovery.Recovery    re-adopting capsules at agent start
    revival.Revival      capsules that ended, started again from their disk
    templates.Templates  snapshots of capsules, and templates no longer used
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from wrenn_server.proto.envd import ProcessRef, StartRequest
from wrenn_server.proto.limits import MIN_MEMORY_MB

from .envd_client import EnvdClient, ProcessEvent
from .errors import AgentError, InvalidArgument, NoCapacity, NotFound, RuntimeFailure, Unreachable, WrongState
from .launcher import Guest, Launcher, Size
from .layout import TemplateDir
from .metrics import Sampler
from .network import Network, Slot
from .pausing import Pauser
from .pool import Key, WarmPool
from .reaper import Reaper
from .recovery import Recovery
from .registry import Registry, Sandbox, Start
from .revival import Revival
from .runtimes.base import Runtime, Usage
from .state import RecordStore, SandboxRecord, SandboxStatus
from .storage import Storage
from .templates import Templates

# How long a capsule whose agent stopped answering is watched for its guest's exit (explain()).
EXIT_CHECKS, EXIT_WAIT = 10, 0.1


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

    @property
    def size(self) -> Size:
        return Size(self.vcpus, self.memory_mb, self.disk_size_mb)


def _check_size(req: CreateRequest) -> None:
    """A size this host can give at all (whether it has room now is the scheduler's business)."""
    cores = os.cpu_count() or 1
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    if not 1 <= req.vcpus <= cores:
        raise InvalidArgument(f"vcpus must be between 1 and {cores} (this host's CPUs), not {req.vcpus}")
    if not MIN_MEMORY_MB <= req.memory_mb <= memory_mb:
        raise InvalidArgument(
            f"memory_mb must be between {MIN_MEMORY_MB} and {memory_mb} (this host's memory), not {req.memory_mb}"
        )
    if req.disk_size_mb < 0:
        raise InvalidArgument("disk_size_mb must not be negative")


def _check_disk_reserve(data_dir: Path, reserve_mb: int) -> None:
    """Refuse a capsule while the host's disk has less free than the reserve kept for its own data: at once,
    rather than a capsule (or the database) failing later for want of space."""
    free_mb = shutil.disk_usage(data_dir).free // 2**20
    if free_mb < reserve_mb:
        raise NoCapacity(
            f"this host's disk has {free_mb} MiB free, under the {reserve_mb} MiB it keeps for its own data "
            "(WRENN_DISK_RESERVE_MB): it takes no new capsules until space is freed"
        )


class SandboxManager:
    def __init__(
        self,
        runtime: Runtime,
        network: Network,
        storage: Storage,
        checkpoint_after_sec: float = 10.0,
        pool_size: int = 1,
        pool_min_free_mb: int = 2048,
        disk_reserve_mb: int = 0,
    ) -> None:
        self.runtime = runtime
        self.disk_reserve_mb = disk_reserve_mb
        self.network = network
        self.storage = storage
        self.launcher = Launcher(runtime, network, storage.data)
        self.registry = Registry(RecordStore(storage.data), self.launcher)
        self.pool = WarmPool(self.launcher, pool_size, pool_min_free_mb)
        self.pauser = Pauser(runtime, network, self.registry, self.launcher, checkpoint_after_sec)
        self.templates = Templates(runtime, network, storage, self.registry, self.launcher, self.pool)
        self.reaper = Reaper(runtime, self.registry, self.launcher, self.pauser)
        self.revival = Revival(network, self.registry, self.launcher)
        self.sampler = Sampler(self._usage, self.registry.running_vcpus, self._disk_used_now)

    # -- the pieces' state, as the service and the tests see it --------------------------------------------

    @property
    def checkpoint_after_sec(self) -> float:
        return self.pauser.checkpoint_after_sec

    @checkpoint_after_sec.setter
    def checkpoint_after_sec(self, seconds: float) -> None:
        self.pauser.checkpoint_after_sec = seconds

    @property
    def auto_paused(self) -> set[str]:
        return self.pauser.auto_paused

    def lookup(self, sandbox_id: str) -> Sandbox:
        return self.registry.lookup(sandbox_id)

    def record_of(self, sandbox_id: str) -> SandboxRecord:
        return self.registry.record_of(sandbox_id)

    def get(self, sandbox_id: str) -> Sandbox:
        return self.registry.get(sandbox_id)

    def list(self) -> list[SandboxRecord]:
        return self.registry.list()

    def active(self, sandbox_id: str) -> EnvdClient:
        """The running capsule's envd, the capsule marked active (its idle timeout starts again)."""
        sandbox = self.registry.get(sandbox_id)
        sandbox.touch()
        return sandbox.envd

    # -- agent start and stop ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Re-adopt the capsules that outlived the previous agent; report the ones that did not."""
        await Recovery(self.runtime, self.network, self.registry, self.pauser, self.revival).run()
        self.storage.collect_unused_templates(self.registry.templates_in_use())  # tombstones' too: kept disks
        self.network.refill()
        self.sampler.start()
        await self.pool.start(self.storage.default_template())
        self.reaper.start()

    async def close(self) -> None:
        await self.pool.close()
        await self.runtime.close()
        self.reaper.stop()
        self.pauser.close()
        await self.sampler.stop()
        await self.network.close()
        for sandbox in self.registry.live():
            await sandbox.envd.close()

    # -- create and destroy -----------------------------------------------------------------------------------

    async def create(self, req: CreateRequest) -> Sandbox:
        """A warm guest when the pool has one; else a restore of the template's (prepared) checkpoint; else
        a boot, while the pool prepares that checkpoint for the next capsule."""
        _check_size(req)
        async with self.registry.lock(req.sandbox_id):
            existing = self.registry.find(req.sandbox_id)
            if existing is not None:
                return existing
            _check_disk_reserve(self.storage.root, self.disk_reserve_mb)
            template_dir = self.storage.template_dir(req.team_id, req.template_id, req.template)
            made_by = TemplateDir(template_dir).runtime()
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
                sandbox = await self._launch(req, self.pool.source(key) or template_dir)
            self.registry.add(sandbox)
        self.pool.want(key)
        self.network.refill()
        return sandbox

    def _record(self, req: CreateRequest, guest: Guest, runtime_id: str = "") -> SandboxRecord:
        return SandboxRecord(
            sandbox_id=req.sandbox_id,
            runtime=self.runtime.name,
            slot=guest.slot.index,
            template=req.template,
            template_id=req.template_id,
            team_id=req.team_id,
            template_dir=str(guest.template_dir),
            vcpus=req.vcpus,
            memory_mb=req.memory_mb,
            disk_size_mb=req.disk_size_mb,
            timeout_sec=req.timeout_sec,
            default_user=req.default_user,
            default_env=dict(req.default_env),
            created_at=time.time(),
            runtime_id=runtime_id,
        )

    async def _adopt(self, req: CreateRequest, warm: Guest) -> Sandbox:
        """The capsule is a warm guest from the pool, which keeps its name; its envd is told who it is."""
        record = self._record(req, warm, runtime_id=warm.name)
        try:
            await warm.envd.init(record.default_user, record.default_env, req.sandbox_id)
        except BaseException as exc:
            await self.launcher.discard(warm)
            if isinstance(exc, asyncio.CancelledError):
                raise
            reason = exc.message if isinstance(exc, AgentError) else repr(exc)
            raise RuntimeFailure(f"capsule failed to start: {reason}") from exc
        record.status = SandboxStatus.RUNNING
        self.registry.records.save(record)
        return Sandbox(record, warm.slot, warm.envd, time.monotonic(), start=Start.POOL)

    async def _launch(self, req: CreateRequest, template_dir: Path) -> Sandbox:
        """A guest booted, or restored from `template_dir`'s checkpoint; recorded from the start, so that an
        agent that dies meanwhile leaves a record the next one cleans up after."""
        guest = await self.launcher.reserve(req.sandbox_id, template_dir)
        record = self._record(req, guest)
        self.registry.records.save(record)
        start = Start.RESTORE if TemplateDir(template_dir).checkpoint() is not None else Start.BOOT

        async def ready(envd: EnvdClient, deadline: float) -> None:
            # Also turns port forwarding back on: checkpoints are taken with it stopped.
            await envd.init(record.default_user, record.default_env, req.sandbox_id, ready_by=deadline)

        await self.launcher.launch(guest, req.size, ready)
        record.status = SandboxStatus.RUNNING
        self.registry.records.save(record)
        return Sandbox(record, guest.slot, guest.envd, time.monotonic(), start=start)

    async def destroy(self, sandbox_id: str) -> None:
        self.pauser.cancel_checkpoint(sandbox_id)
        async with self.registry.lock(sandbox_id):
            held = self.registry.pop(sandbox_id)
            self.sampler.forget(sandbox_id)
            if isinstance(held, Sandbox):
                await held.envd.close()
                await self.registry.release(held.record, held.slot, keep_record=False)
            elif held is not None:
                await self.registry.release(held, Slot(held.slot), keep_record=False)
            else:
                raise NotFound(f"capsule {sandbox_id} not found on this host")
        self.registry.forget_lock(sandbox_id)
        await self.templates.collect_unused()

    # -- pause, resume, snapshot (see pausing.py and templates.py) --------------------------------------------

    async def pause(self, sandbox_id: str) -> Sandbox:
        return await self.pauser.pause(sandbox_id)

    async def resume(self, sandbox_id: str) -> Sandbox:
        """A paused capsule continued; one that ended (a tombstone) started again from its disk."""
        async with self.registry.lock(sandbox_id):
            if self.registry.find(sandbox_id) is None:  # its tombstone, or NotFound
                return await self.revival.revive(self.registry.record_of(sandbox_id))
        return await self.pauser.resume(sandbox_id)

    async def snapshot(self, sandbox_id: str, team_id: str, template_id: str) -> Path:
        return await self.templates.snapshot(sandbox_id, team_id, template_id)

    async def delete_template(self, team_id: str, template_id: str) -> None:
        await self.templates.delete(team_id, template_id)

    async def explain(self, sandbox_id: str, exc: Unreachable) -> AgentError:
        """Why the capsule's agent stopped answering: its guest ended (the capsule ends now, saying why, a
        guest's exit being seen a moment after its connections drop), or `exc` as it is."""
        sandbox = self.registry.find(sandbox_id)
        if sandbox is not None:
            for _ in range(EXIT_CHECKS):
                if self.runtime.exited(sandbox.record.name):
                    await self.reaper.reap(sandbox)
                    break
                await asyncio.sleep(EXIT_WAIT)
        try:
            record = self.registry.record_of(sandbox_id)
        except AgentError:
            return exc
        if record.status is SandboxStatus.ERROR:
            return WrongState(f"the capsule ended: {record.error}")
        return exc

    # -- what a capsule uses ----------------------------------------------------------------------------------

    def _disk_used_now(self, sandbox_id: str) -> int:
        sandbox = self.registry.find(sandbox_id)
        return 0 if sandbox is None else self.storage.disk_used(self.registry.records.capsule(sandbox.record))

    async def _usage(self, sandbox_id: str) -> Usage | None:
        sandbox = self.registry.find(sandbox_id)
        return None if sandbox is None else await self.runtime.usage(sandbox.record.name)

    async def disk_used(self, sandbox_id: str) -> int:
        capsule = self.registry.records.capsule(self.record_of(sandbox_id))
        return await asyncio.to_thread(self.storage.disk_used, capsule)

    async def events(self, sandbox_id: str, req: StartRequest | ProcessRef) -> AsyncIterator[ProcessEvent]:
        envd = self.active(sandbox_id)
        async for event in envd.stream(req):
            yield event
