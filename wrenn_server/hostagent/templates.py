"""Templates made from capsules: snapshots, their deletion, and removing what no capsule uses any more."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

from .checkpoints import quiesce, save_template
from .errors import AgentError, Conflict, RuntimeFailure
from .launcher import Launcher
from .layout import TemplateDir, replaced, staging
from .network import Network
from .pool import WarmPool
from .registry import Registry
from .runtimes.base import Runtime
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
            try:
                await save_template(self.runtime, record.name, self.registry.records.capsule(record), new, about)
            except AgentError as exc:
                self.registry.lost(record, f"the snapshot failed: {exc.message}")
                raise RuntimeFailure(record.error) from exc
            if target.exists():  # overwrite: capsules made from the old one keep it until they go
                self.pool.drop(target)
                old = replaced(target, f"{template_id}-{int(time.time() * 1000)}")
                target.rename(old)
                TemplateDir(old).deleted_marker.touch()
            new.rename(target)
            try:
                await self.network.readdress(sandbox.slot)
                await self.launcher.restore(sandbox.guest, sandbox.size, TemplateDir(target).checkpoint_dir.path)
            except AgentError as exc:
                self.registry.lost(record, f"the capsule did not come back after its snapshot: {exc.message}")
                raise RuntimeFailure(record.error) from exc
            sandbox.touch()
            return target

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
