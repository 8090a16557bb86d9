"""A gVisor capsule's own disk: a sparse ext4 file of its `disk_size_mb`, loop-mounted, holding its overlay's
upper and work directories, so that its writes stop at its size (ENOSPC inside) and the space comes back when
it removes files. (These hosts' kernels have no quota support; a loop device needs none.)

Making one takes ~20 ms (truncate, `mkfs.ext4` without a journal, mount), so disks are made ahead: a few spares
per size, for the sizes used most recently, and a create takes one with a rename and a symlink.

    <data>/disks/<id>.ext4     a spare: formatted, mounted at <data>/disks/<id>/, its `upper` and `work` made
    <capsule>/disk.ext4        a capsule's disk: a spare's file, renamed (its loop device follows the file)
    <capsule>/fs               a link to <data>/disks/<id>/, where it is mounted

A capsule's disk is unmounted when its guest is destroyed (its loop device detached with it: `mount -o loop`
sets autoclear); the file goes with the capsule's directory, so a stopped capsule keeps its files. It is
mounted again where its link points when the capsule restarts from it (after a reboot of the host, say).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import tempfile
from collections import OrderedDict
from pathlib import Path

from .. import proc
from ..errors import RuntimeFailure
from ..layout import CapsuleDir

log = logging.getLogger(__name__)

SPARES_PER_SIZE = 2  # a create and the warm pool's refill right after it
MAX_SIZES = 2  # sizes kept in stock: the most recently used ones
_MKFS = ["mkfs.ext4", "-q", "-F", "-b", "4096", "-m", "0", "-O", "^has_journal", "-E", "lazy_itable_init=1,nodiscard"]
_MOUNT_OPTIONS = "loop,noatime,nosuid,nodev"


class LoopDisks:
    def __init__(self, root: Path, sandboxes: Path) -> None:
        self.root = root
        self.sandboxes = sandboxes
        self._spares: OrderedDict[int, list[str]] = OrderedDict()  # size in MiB -> ids, most recently used last
        self._busy: set[str] = set()  # being made or handed over: not the collector's
        self._refill: asyncio.Task[None] | None = None
        self._dropping: list[str] = []  # spares of a size no longer kept
        self._collected = False

    async def works(self) -> str | None:
        """Make, mount and remove a small disk: None if that works here, else why not."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=self.root, prefix=".probe-") as tmp:
                image, mount = Path(tmp) / "probe.ext4", Path(tmp) / "mnt"
                mount.mkdir()
                await _format(image, 16)
                await _mount(image, mount)
                await _unmount(mount)
        except (OSError, RuntimeFailure) as exc:
            return str(exc.message if isinstance(exc, RuntimeFailure) else exc)
        return None

    async def attach(self, capsule: CapsuleDir, size_mb: int) -> None:
        """Give the capsule its own disk of `size_mb` (a spare when one is ready), or mount the one it has."""
        if capsule.disk_link.is_symlink():
            await self.mount(capsule)
            return
        spares = self._spares.get(size_mb)
        ident = spares.pop(0) if spares else await self._make(size_mb)
        self._busy.add(ident)
        try:
            os.replace(self._image(ident), capsule.disk_image)
            capsule.disk_link.symlink_to(self.root / ident)
        finally:
            self._busy.discard(ident)
        self._want(size_mb)

    async def mount(self, capsule: CapsuleDir) -> None:
        """Mount the capsule's disk where its link points, unless it is (it is not after a reboot)."""
        target = Path(os.readlink(capsule.disk_link))
        if os.path.ismount(target):
            return
        target.mkdir(parents=True, exist_ok=True)
        await _mount(capsule.disk_image, target)

    async def detach(self, capsule: CapsuleDir) -> None:
        """Unmount the capsule's disk, its loop device detached with it; its file stays with the capsule."""
        if not capsule.disk_link.is_symlink():
            return
        target = Path(os.readlink(capsule.disk_link))
        await _unmount(target)
        with contextlib.suppress(OSError):
            target.rmdir()

    async def close(self) -> None:
        """Remove the spares (an agent killed instead leaves them to the next one's collection)."""
        if self._refill is not None:
            self._refill.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refill
        idents = [*self._dropping, *(i for idents in self._spares.values() for i in idents)]
        self._spares.clear()
        self._dropping.clear()
        for ident in idents:
            await self._remove(ident)

    async def settle(self) -> None:
        """Wait until the spares being made are ready (for benches and tests)."""
        if self._refill is not None:
            await self._refill

    @staticmethod
    def used_bytes(capsule: CapsuleDir) -> int | None:
        """What the capsule's files take on its disk (the ext4's used blocks, its own metadata not counted);
        None if it has no disk of its own. An unmounted disk answers the blocks its file holds."""
        if not capsule.disk_link.is_symlink():
            return None
        target = Path(os.readlink(capsule.disk_link))
        try:
            if os.path.ismount(target):
                st = os.statvfs(target)
                return (st.f_blocks - st.f_bfree) * st.f_frsize
            return capsule.disk_image.stat().st_blocks * 512
        except OSError:
            return 0

    def _image(self, ident: str) -> Path:
        return self.root / f"{ident}.ext4"

    async def _make(self, size_mb: int) -> str:
        """A new disk, formatted and mounted, its overlay directories made: its id."""
        ident = secrets.token_hex(8)
        self._busy.add(ident)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            mount = self.root / ident
            mount.mkdir()
            await _format(self._image(ident), size_mb)
            await _mount(self._image(ident), mount)
            for name in ("upper", "work"):
                (mount / name).mkdir()
        except BaseException:
            await self._remove(ident)
            raise
        finally:
            self._busy.discard(ident)
        return ident

    async def _remove(self, ident: str) -> None:
        await _unmount(self.root / ident)
        with contextlib.suppress(OSError):
            (self.root / ident).rmdir()
        self._image(ident).unlink(missing_ok=True)

    def _want(self, size_mb: int) -> None:
        """Keep spares of `size_mb` from now on (forgetting the least recent size beyond `MAX_SIZES`)."""
        self._spares.setdefault(size_mb, [])
        self._spares.move_to_end(size_mb)
        while len(self._spares) > MAX_SIZES:
            _size, idents = self._spares.popitem(last=False)
            self._busy.update(idents)
            self._dropping.extend(idents)  # removed by the refill
        if self._refill is None or self._refill.done():
            self._refill = asyncio.create_task(self._fill())

    async def _fill(self) -> None:
        """Make spares, one at a time, the most recently used size first; first (once) remove the disks no
        capsule links to, which a previous agent left behind."""
        try:
            if not self._collected:
                self._collected = True
                await self._collect()
            while self._dropping:
                ident = self._dropping.pop()
                await self._remove(ident)
                self._busy.discard(ident)
            while True:
                size = next((s for s in reversed(self._spares) if len(self._spares[s]) < SPARES_PER_SIZE), None)
                if size is None:
                    return
                ident = await self._make(size)
                if size in self._spares:
                    self._spares[size].append(ident)
                else:
                    await self._remove(ident)
        except (OSError, RuntimeFailure) as exc:
            log.warning("could not make a spare disk: %s", exc)

    async def _collect(self) -> None:
        """Remove the disks under `root` that are neither a capsule's nor a spare of this agent's."""
        linked = set()
        for link in self.sandboxes.glob("*/fs"):
            with contextlib.suppress(OSError):
                linked.add(Path(os.readlink(link)).name)
        mine = linked | self._busy | {i for idents in self._spares.values() for i in idents}
        stale = {p.name.removesuffix(".ext4") for p in self.root.glob("*") if not p.name.startswith(".")}
        for ident in sorted(stale - mine):
            log.info("removing disk %s, no capsule's", ident)
            await self._remove(ident)


async def _format(image: Path, size_mb: int) -> None:
    with image.open("wb") as f:
        f.truncate(size_mb * 2**20)
    await proc.run([*_MKFS, str(image)], timeout=60)


async def _mount(image: Path, target: Path) -> None:
    await proc.run(["mount", "-o", _MOUNT_OPTIONS, str(image), str(target)], timeout=30)


async def _unmount(target: Path) -> None:
    """Unmount `target` if it is mounted: at once if nothing uses it, else as soon as nothing does."""
    if not os.path.ismount(target):
        return
    done = await proc.run(["umount", str(target)], check=False, timeout=30)
    if done.returncode != 0:
        await proc.run(["umount", "-l", str(target)], check=False, timeout=30)
