"""Templates made from capsules: snapshots, their deletion, and removing what no capsule uses any more."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

from .checkpoints import quiesce, save_template
from .errors import AgentError, Conflict, RuntimeFailure, WrongState
from .launcher import Launcher
from .layout import TemplateDir, replaced, staging
from .network import Network
from .pool import WarmPool
from .registry import Registry
from .runtimes.base import Runtime
from .state import SandboxRecord, SandboxStatus
from .storage import Storage


class Templates:
    def __init__(
        self,
        runtime: Runtime,
        network: Network,
        storage: Storage,
        registry: Registry,
        launcher: Launcher,
        pool: WarmPool,
    ) -> None:
        self.runtime = runtime
        self.network = network
        self.storage = storage
        self.registry = registry
        self.launcher = launcher
        self.pool = pool

    async def snapshot(self, sandbox_id: str, team_id: str, template_id: str) -> Path:
        """A template of the running capsule as it is now: its files over its template's, and its guest state
        (memory, processes); capsules created from it continue from there. The capsule itself goes on after
        a short freeze (it is checkpointed, then restored from that checkpoint)."""
        async with self.registry.lock(sandbox_id):
            ended = self.registry.record_of(sandbox_id)
            if ended.status is SandboxStatus.ERROR:
                return await self._snapshot_files(ended, team_id, template_id)
            sandbox = self.registry.get(sandbox_id)
            record = sandbox.record
            if connections := await quiesce(self.runtime, sandbox.envd, self.network, sandbox.slot, cut_open=True):
                await sandbox.envd.forward_again()
                raise Conflict(
                    f"the capsule holds network connections ({', '.join(connections)}), which a snapshot cannot "
                    "keep: close them, or wait a minute for closed ones to expire"
                )
            target = self.storage.team_template(team_id, template_id)
            new = staging(target, template_id)
            await asyncio.to_thread(shutil.rmtree, new, True)
            about: dict[str, object] = {"base": record.template_dir, "source": sandbox_id}
            record.snapshotting = str(new)  # an agent that dies before the end: the next one settles it
            self.registry.records.save(record)
            try:
                await save_template(self.runtime, record.name, self.registry.records.capsule(record), new, about)
            except AgentError as exc:
                record.snapshotting = ""
                await asyncio.to_thread(shutil.rmtree, new, True)
                self.registry.lost(record, f"the snapshot failed: {exc.message}")
                raise RuntimeFailure(record.error) from exc
            self._put_in_place(new, target, template_id)  # overwrite: capsules made from the old one keep it
            try:
                await self.network.readdress(sandbox.slot)
                await self.launcher.restore(sandbox.guest, sandbox.size, TemplateDir(target).checkpoint_dir.path)
            except AgentError as exc:
                record.snapshotting = ""
                self.registry.lost(record, f"the capsule did not come back after its snapshot: {exc.message}")
                raise RuntimeFailure(record.error) from exc
            record.snapshotting = ""
            self.registry.records.save(record)
            sandbox.touch()
            return target

    async def _snapshot_files(self, record: SandboxRecord, team_id: str, template_id: str) -> Path:
        """A template of a capsule that ended, from the disk its host keeps: its files only (it has no guest
        state left); capsules created from it boot on those files."""
        if not record.released:
            raise WrongState(f"capsule {record.sandbox_id} is {record.status}")
        target = self.storage.team_template(team_id, template_id)
        new = staging(target, template_id)
        await asyncio.to_thread(shutil.rmtree, new, True)
        new.mkdir(parents=True)
        try:
            await self.runtime.save_files(self.registry.records.capsule(record).path, new)
        except AgentError:
            await asyncio.to_thread(shutil.rmtree, new, True)
            raise
        about: dict[str, object] = {"base": record.template_dir, "source": record.sandbox_id}
        about["runtime"] = self.runtime.name
        TemplateDir(new).write_about(about)
        self._put_in_place(new, target, template_id)
        return target

    def _put_in_place(self, new: Path, target: Path, template_id: str) -> None:
        """The template written in `new` becomes `target` (an old one stays while capsules made from it run)."""
        if target.exists():
            self.pool.drop(target)
            old = replaced(target, f"{template_id}-{int(time.time() * 1000)}")
            target.rename(old)
            TemplateDir(old).deleted_marker.touch()
        new.rename(target)

    async def delete(self, team_id: str, template_id: str) -> None:
        """Removed at once when nothing uses it; otherwise marked, and removed once its last capsule is gone."""
        target = self.storage.team_template(team_id, template_id)
        if not target.exists():
            return
        TemplateDir(target).deleted_marker.touch()
        self.pool.drop(target)
        await self.collect_unused()

    async def collect_unused(self) -> None:
        in_use = self.registry.templates_in_use() | self.pool.templates_in_use()
        await asyncio.to_thread(self.storage.collect_unused_templates, in_use)
