"""Starting guests, one way for all: a capsule's create and the warm pool's guests both come up here.

A guest is reserved (a network slot and an envd client), then launched: the runtime boots it or restores it from
the template's checkpoint, and the caller's `ready` step waits for its envd, but no longer than the guest lives.
A launch that fails leaves nothing behind and says why, with the guest's console when it has one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .envd_client import EnvdClient
from .errors import AgentError, RuntimeFailure
from .layout import DataDir
from .network import Network, Slot
from .runtimes.base import Runtime, SandboxSpec

log = logging.getLogger(__name__)

ENVD_BOOT_TIMEOUT = 60.0
_CONSOLE_CAUSES = ("Kernel panic", "BUG:", "Oops:", "Out of memory")

# Waits for a new guest's envd (and tells it what it needs), by the deadline given.
Ready = Callable[[EnvdClient, float], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class Size:
    vcpus: int
    memory_mb: int
    disk_size_mb: int


@dataclass
class Guest:
    """A guest on this host: the runtime's name for it, what its disk is layered on, its slot and its envd."""

    name: str
    template_dir: Path  # resolved: a template, a snapshot template or a prepared checkpoint
    slot: Slot
    envd: EnvdClient


class Launcher:
    def __init__(self, runtime: Runtime, network: Network, data: DataDir) -> None:
        self.runtime = runtime
        self.network = network
        self.data = data

    def spec(self, name: str, template_dir: Path, size: Size, slot: Slot) -> SandboxSpec:
        return SandboxSpec(
            sandbox_id=name,
            template_dir=template_dir,
            workdir=self.data.capsule(name).path,
            vcpus=size.vcpus,
            memory_mb=size.memory_mb,
            disk_size_mb=size.disk_size_mb,
            network=slot.guest,
        )

    async def reserve(self, name: str, template_dir: Path) -> Guest:
        """A network slot for a guest about to be launched (a new slot's interface has the guest's address)."""
        slot = await self.network.acquire()
        return Guest(name, template_dir, slot, EnvdClient(slot.host_ip))

    async def launch(self, guest: Guest, size: Size, ready: Ready) -> None:
        """Boot the guest, or restore it from its template's checkpoint, and wait until it is `ready`. A failed
        launch discards the guest and raises `RuntimeFailure` saying why."""
        try:
            await self.runtime.create(self.spec(guest.name, guest.template_dir, size, guest.slot))
            deadline = time.monotonic() + ENVD_BOOT_TIMEOUT
            await self._while_alive(guest.name, ready(guest.envd, deadline))
        except BaseException as exc:
            await guest.envd.close()
            reason = exc.message if isinstance(exc, AgentError) else repr(exc)
            console = self.console_tail(guest.name)
            await self.discard(guest)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise RuntimeFailure(f"capsule failed to start: {reason}{console}") from exc

    async def reboot(self, guest: Guest, size: Size, ready: Ready) -> None:
        """Boot the guest again on its own disk as it is: its files kept, its processes gone. A failure stops
        the guest and gives its slot back, keeps its files, and raises `RuntimeFailure` saying why."""
        workdir = self.data.capsule(guest.name).path
        try:
            await self.runtime.destroy(guest.name, workdir)  # what the guest that ended left (runsc's, a mount)
            spec = self.spec(guest.name, guest.template_dir, size, guest.slot)
            await self.runtime.create(dataclasses.replace(spec, cold=True))
            deadline = time.monotonic() + ENVD_BOOT_TIMEOUT
            await self._while_alive(guest.name, ready(guest.envd, deadline))
        except BaseException as exc:
            await guest.envd.close()
            reason = exc.message if isinstance(exc, AgentError) else repr(exc)
            console = self.console_tail(guest.name)
            await self.stop(guest.name, guest.slot)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise RuntimeFailure(f"the capsule could not start again from its disk: {reason}{console}") from exc

    async def restore(self, guest: Guest, size: Size, checkpoint_dir: Path) -> None:
        """Continue the guest from a checkpoint (its slot's address given back first), port forwarding on again."""
        await self.runtime.restore(self.spec(guest.name, guest.template_dir, size, guest.slot), checkpoint_dir)
        await guest.envd.forward_again(ready_by=time.monotonic() + ENVD_BOOT_TIMEOUT)

    async def _while_alive(self, name: str, waiting: Coroutine[Any, Any, None]) -> None:
        """Wait for a guest coming up, but no longer than it lives: one that dies while booting (a kernel
        panic, a broken disk) fails at once, not after the whole boot timeout."""
        task = asyncio.ensure_future(waiting)
        try:
            while not task.done():
                await asyncio.wait([task], timeout=0.25)
                if not task.done() and self.runtime.exited(name):
                    raise RuntimeFailure("the guest stopped while it was starting")
            task.result()
        finally:
            task.cancel()

    async def stop(self, name: str, slot: Slot) -> None:
        """The guest and its network slot gone; its files stay."""
        try:
            await self.runtime.destroy(name, self.data.capsule(name).path)
        finally:
            # Once only: the slot's number may belong to another guest by the next call.
            await self.network.teardown(slot)

    async def discard(self, guest: Guest) -> None:
        """The guest, its slot and its files gone."""
        await guest.envd.close()
        try:
            await self.stop(guest.name, guest.slot)
        finally:
            await asyncio.to_thread(shutil.rmtree, self.data.capsule(guest.name).path, True)

    def console_tail(self, name: str) -> str:
        """The end of the guest's console, its panic's cause first: for an error saying why it stopped."""
        try:
            text = self.data.capsule(name).console.read_bytes()[-16384:].decode(errors="replace")
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
