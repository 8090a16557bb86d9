"""Fast creation: prepared checkpoints of templates, and a warm pool of capsules restored from them.

A capsule is never booted twice the same way. The first capsule of a template (at a size) boots; meanwhile a
*prepared checkpoint* is made in the background: a throw-away guest boots, envd comes up, and its whole state is
checkpointed next to the template (`<template>/prepared/<vcpus>x<memory>-<stamp>/`, laid out like a snapshot
template, so the rest of the agent treats it as one). Every later capsule of that template restores it instead
of booting. A snapshot template is such a checkpoint already.

On top of that, `size` guests per template and size are kept restored and idle, nameless until a create takes
one, keeping the `wp-…` name the runtime knows it by (see `SandboxRecord.runtime_id`), and envd is told the
capsule's user and environment. A create that finds none (a miss) restores the
prepared checkpoint itself. The pool is refilled in the background, only while the machine has memory to spare;
it serves the templates and sizes used most recently.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import shutil
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from .checkpoints import quiesce, save_template
from .envd_client import EnvdClient
from .errors import AgentError, RuntimeFailure
from .launcher import Guest, Launcher, Size
from .layout import TemplateDir, staging

log = logging.getLogger(__name__)

POOL_PREFIX = "wp-"
MAX_KEYS = 2  # the templates/sizes kept warm: the most recently created ones
# The platform template's size (see the control plane's template catalog): warmed from the start.
DEFAULT_VCPUS = 1
DEFAULT_MEMORY_MB = 512
DEFAULT_DISK_MB = 5120


@dataclass(frozen=True)
class Key:
    template_dir: Path  # resolved: a new image version, or a replaced snapshot template, is a new key
    vcpus: int
    memory_mb: int
    disk_size_mb: int

    @property
    def size(self) -> Size:
        return Size(self.vcpus, self.memory_mb, self.disk_size_mb)


@dataclass
class Stats:
    hits: int = 0
    misses: int = 0
    prepared: int = 0
    failures: int = 0


def memory_available_mb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    return 0


class WarmPool:
    """Restored, idle guests (`Guest`s, their disk layered on the prepared checkpoint or snapshot template) waiting
    for a capsule, per `Key`."""

    def __init__(self, launcher: Launcher, size: int, min_free_mb: int) -> None:
        self.launcher = launcher
        self.runtime = launcher.runtime
        self.network = launcher.network
        self.size = size
        self.min_free_mb = min_free_mb
        self.stats = Stats()
        self.ready: dict[Key, list[Guest]] = {}
        self._stamp = ""
        self._wanted: OrderedDict[Key, None] = OrderedDict()
        self._work: asyncio.Task[None] | None = None
        self._preparing: set[Key] = set()
        self._discards: set[asyncio.Task[None]] = set()

    async def start(self, default_template: Path | None) -> None:
        """Remove the guests a previous agent left warm (their slots are already gone), then warm the default."""
        probe = await self.runtime.probe()
        # A checkpoint is only good for the runtime version, platform and guest settings that wrote it.
        stamp = f"{self.runtime.name} {probe.reason} {sorted(probe.details.items())}"
        self._stamp = hashlib.sha256(stamp.encode()).hexdigest()[:10]
        for workdir in self.launcher.data.sandboxes.glob(POOL_PREFIX + "*"):
            capsule = self.launcher.data.capsule(workdir.name)
            if not capsule.record.exists():
                await self.runtime.destroy(capsule.name, capsule.path)
                await asyncio.to_thread(shutil.rmtree, capsule.path, True)
        if default_template is not None:
            self.want(Key(default_template, DEFAULT_VCPUS, DEFAULT_MEMORY_MB, DEFAULT_DISK_MB))

    async def close(self) -> None:
        """Stop the warm guests: they are no one's capsules (an agent killed instead leaves them to the next)."""
        if self._work is not None:
            self._work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._work
        for guests in self.ready.values():
            for guest in guests:
                self._discard_later(guest)
        self.ready.clear()
        await asyncio.gather(*self._discards, return_exceptions=True)

    def source(self, key: Key) -> Path | None:
        """What a capsule of `key` restores: the template's own checkpoint, or its prepared one; None: boot."""
        if TemplateDir(key.template_dir).checkpoint() is not None:
            return key.template_dir
        prepared = self._prepared_dir(key)
        return prepared if TemplateDir(prepared).checkpoint() is not None else None

    def _prepared_dir(self, key: Key) -> Path:
        size = f"{key.vcpus}x{key.memory_mb}x{key.disk_size_mb}-{self._stamp}"
        return TemplateDir(key.template_dir).prepared(size)

    def counters(self) -> dict[str, int]:
        ready = sum(len(guests) for guests in self.ready.values())
        st = self.stats
        return {"hits": st.hits, "misses": st.misses, "ready": ready, "prepared": st.prepared, "failures": st.failures}

    def take(self, key: Key) -> Guest | None:
        """A warm guest for a new capsule of `key`, counted as a hit, or None (a miss)."""
        guests = self.ready.get(key, [])
        if guests:
            self.stats.hits += 1
            return guests.pop(0)
        self.stats.misses += 1
        return None

    def want(self, key: Key) -> None:
        """Keep `key` warm from now on (forgetting the least recent one beyond `MAX_KEYS`); refill now."""
        self._wanted[key] = None
        self._wanted.move_to_end(key)
        while len(self._wanted) > MAX_KEYS:
            old, _ = self._wanted.popitem(last=False)
            for guest in self.ready.pop(old, []):
                self._discard_later(guest)
        self.kick()

    def drop(self, template_dir: Path) -> None:
        """The template is deleted or replaced: its warm guests go, and no new ones are made."""
        template_dir = template_dir.resolve()  # as keys have it
        for key in [k for k in self._wanted if k.template_dir == template_dir]:
            del self._wanted[key]
        for key in [k for k in self.ready if k.template_dir == template_dir]:
            for guest in self.ready.pop(key):
                self._discard_later(guest)

    def templates_in_use(self) -> set[str]:
        return {str(w.template_dir) for guests in self.ready.values() for w in guests}

    def kick(self) -> None:
        if self._work is None or self._work.done():
            self._work = asyncio.create_task(self._refill())

    async def _refill(self) -> None:
        """One guest at a time, most recently wanted key first, so the pool never competes with itself."""
        while True:
            key = next((k for k in reversed(self._wanted) if self._short(k)), None)
            if key is None:
                return
            try:
                if self.source(key) is None:
                    await self._prepare(key)
                else:
                    guest = await self._start(key)
                    if key in self._wanted:
                        self.ready.setdefault(key, []).append(guest)
                    else:
                        await self.launcher.discard(guest)
            except (AgentError, OSError) as exc:
                self.stats.failures += 1
                log.warning("warm pool: %s at %dx%d MiB failed: %s", key.template_dir, key.vcpus, key.memory_mb, exc)
                self._wanted.pop(key, None)  # wanted again by its next create
            except asyncio.CancelledError:
                raise

    def _short(self, key: Key) -> bool:
        if self.source(key) is None:
            return key not in self._preparing
        if len(self.ready.get(key, [])) >= self.size:
            return False
        return memory_available_mb() - key.memory_mb >= self.min_free_mb

    async def _start(self, key: Key) -> Guest:
        """A guest restored from the key's checkpoint, envd answering; port forwarding stays off until the
        capsule's `/init`."""
        source = self.source(key)
        if source is None:
            raise RuntimeFailure("no checkpoint to restore")
        guest = await self.launcher.reserve(POOL_PREFIX + secrets.token_hex(6), source)
        await self.launcher.launch(guest, key.size, _wait_ready)
        self.network.refill()
        return guest

    async def _prepare(self, key: Key) -> None:
        """Boot a guest of the template, wait for envd, checkpoint it, and keep that as the key's checkpoint."""
        self._preparing.add(key)
        name = POOL_PREFIX + secrets.token_hex(6)
        target = self._prepared_dir(key)
        new = staging(target, name)
        started = time.monotonic()
        try:
            guest = await self.launcher.reserve(name, key.template_dir)
            await self.launcher.launch(guest, key.size, _wait_ready)
            try:
                if connections := await quiesce(self.runtime, guest.envd, self.network, guest.slot, cut_open=True):
                    raise RuntimeFailure(f"the fresh guest holds network connections {connections}")
                about: dict[str, object] = {"base": str(key.template_dir), "prepared": True}
                await save_template(self.runtime, name, self.launcher.data.capsule(name), new, about)
                with contextlib.suppress(OSError):  # another agent sharing the images made it first: keep theirs
                    new.rename(target)
                self.stats.prepared += 1
                log.info("prepared checkpoint %s in %.2f s", target, time.monotonic() - started)
            finally:
                await self.launcher.discard(guest)
        finally:
            self._preparing.discard(key)
            await asyncio.to_thread(shutil.rmtree, new, True)

    def _discard_later(self, guest: Guest) -> None:
        task = asyncio.create_task(self.launcher.discard(guest))
        self._discards.add(task)
        task.add_done_callback(self._discards.discard)


async def _wait_ready(envd: EnvdClient, deadline: float) -> None:
    await envd.wait_ready(deadline)
