"""The microVM outputs of the `minimal` image: a guest kernel, a small initramfs and the root filesystem as ext4.

One image definition, two outputs: the rootfs directory the gVisor runtime layers over is also written as an
ext4 file (`vm/rootfs.ext4`) that microVM capsules put a qcow2 overlay on. The kernel is Debian's cloud kernel,
taken from its package without installing it (cached per version under `<dir>/cache/kernel/`): its `vmlinuz` is
a bzImage, and QEMU's microvm machine boots the uncompressed `vmlinux` inside it through PVH. The virtio drivers
are modules in that kernel, so a busybox initramfs loads them, mounts the disk and hands over to `wrenn-init`.
"""

from __future__ import annotations

import gzip
import lzma
import os
import re
import shutil
import stat
import subprocess
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

KERNEL_PACKAGE = "linux-image-cloud-amd64"  # Debian's metapackage: the newest cloud kernel of the release
BUSYBOX = Path("/bin/busybox")  # from busybox-static
# The drivers a microVM needs (their dependencies listed too); loaded in the order their `depends=` asks.
MODULES = (
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio_mmio.ko",
    "drivers/block/virtio_blk.ko",
    "net/core/failover.ko",
    "drivers/net/net_failover.ko",
    "drivers/net/virtio_net.ko",
    "drivers/char/virtio_console.ko",
)
ROOTFS_HEADROOM_MB = 512  # free space in the template image; a capsule's disk grows to its disk_size_mb

INIT = """#!/bin/busybox sh
# The initramfs of a wrenn microVM: virtio drivers in, the root disk mounted, then the capsule's own init.
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs dev /dev
for m in {modules}; do /bin/busybox insmod /lib/modules/$m.ko || echo "wrenn initramfs: insmod $m failed"; done
# discard: a file removed in the guest frees its blocks in the qcow2 on the host, so disk_used stays true.
if ! /bin/busybox mount -t ext4 -o discard /dev/vda /newroot; then
  echo "wrenn initramfs: no root disk (/dev/vda)"; /bin/busybox poweroff -f
fi
/bin/busybox umount /proc
/bin/busybox umount /dev
exec /bin/busybox switch_root /newroot /usr/local/bin/wrenn-init
"""


class VmBuildError(Exception):
    pass


def kernel_package() -> str:
    """The versioned package the metapackage points at now (e.g. linux-image-6.1.0-47-cloud-amd64)."""
    done = subprocess.run(["apt-cache", "depends", KERNEL_PACKAGE], capture_output=True, text=True)
    for line in done.stdout.splitlines():
        name = line.strip().removeprefix("Depends:").strip()
        if line.strip().startswith("Depends:") and name.startswith("linux-image-"):
            return name
    raise VmBuildError(f"apt does not know {KERNEL_PACKAGE}: {done.stderr.strip() or 'run apt-get update'}")


def fetch_kernel(cache: Path) -> Path:
    """`<cache>/<package>/` with `vmlinux` and `modules/`; downloaded and unpacked once per version."""
    package = kernel_package()
    target = cache / package
    if (target / "vmlinux").is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # apt drops privileges to _apt for the download
        got = subprocess.run(["apt-get", "download", "-q", package], cwd=work, capture_output=True, text=True)
        debs = list(work.glob("*.deb"))
        if not debs:
            raise VmBuildError(f"could not download {package}: {got.stderr.strip()[-500:]}")
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(work / "x")], check=True)
        (vmlinuz,) = (work / "x" / "boot").glob("vmlinuz-*")
        staging = work / "kernel"
        (staging / "modules").mkdir(parents=True)
        (staging / "vmlinux").write_bytes(extract_vmlinux(vmlinuz.read_bytes()))
        (moddir,) = (work / "x" / "lib" / "modules").iterdir()
        for module in MODULES:
            shutil.copy2(moddir / "kernel" / module, staging / "modules" / Path(module).name)
        (staging / "version").write_text(moddir.name + "\n")
        staging.rename(target)
    return target


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF kernel inside a bzImage, whichever of the usual compressions it carries."""
    decompressors: tuple[tuple[bytes, Callable[[bytes], bytes]], ...] = (
        (b"\x02\x21\x4c\x18", lambda data: _tool(["lz4", "-dc"], data)),
        (b"\x28\xb5\x2f\xfd", lambda data: _tool(["zstd", "-dcq"], data)),
        (b"\xfd7zXZ\x00", lambda data: lzma.LZMADecompressor().decompress(data)),
        (b"\x1f\x8b\x08", lambda data: zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)),
    )
    for magic, decompress in decompressors:
        start = bzimage.find(magic)
        while start != -1:
            try:
                out = decompress(bzimage[start:])
            except (OSError, EOFError, lzma.LZMAError, zlib.error, VmBuildError):
                out = b""
            if out.startswith(b"\x7fELF"):
                return out
            start = bzimage.find(magic, start + 1)
    raise VmBuildError("no kernel found inside the bzImage (unknown compression)")


def _tool(argv: list[str], data: bytes) -> bytes:
    if shutil.which(argv[0]) is None:
        raise VmBuildError(f"{argv[0]} is not installed")
    # The payload is followed by other bytes: the tool stops at the end of its frame, complaining or not.
    return subprocess.run(argv, input=data, capture_output=True).stdout


def load_order(modules: dict[str, bytes]) -> list[str]:
    """Module names, each after the ones its `.modinfo` says it depends on (the order moves between builds)."""
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in order:
            return
        if name not in modules or name in path:
            raise VmBuildError(f"module {name} is missing or in a dependency loop ({' -> '.join(path)})")
        info = re.search(rb"(?:^|\0)depends=([^\0]*)", modules[name])
        for dep in (info.group(1).decode().split(",") if info and info.group(1) else []):
            visit(dep.replace("-", "_"), (*path, name))
        order.append(name)

    for name in sorted(modules):
        visit(name, ())
    return order


def write_initramfs(kernel: Path, out: Path) -> None:
    """A gzip'd newc cpio: busybox, the virtio modules, and the init above."""
    if not BUSYBOX.is_file():
        raise VmBuildError(f"{BUSYBOX} is missing (Debian package busybox-static)")
    names = " ".join(load_order({Path(m).stem: (kernel / "modules" / Path(m).name).read_bytes() for m in MODULES}))
    files: list[tuple[str, int, bytes]] = [
        ("bin", stat.S_IFDIR | 0o755, b""),
        ("dev", stat.S_IFDIR | 0o755, b""),
        ("proc", stat.S_IFDIR | 0o755, b""),
        ("newroot", stat.S_IFDIR | 0o755, b""),
        ("lib", stat.S_IFDIR | 0o755, b""),
        ("lib/modules", stat.S_IFDIR | 0o755, b""),
        ("bin/busybox", stat.S_IFREG | 0o755, BUSYBOX.read_bytes()),
        ("init", stat.S_IFREG | 0o755, INIT.format(modules=names).encode()),
    ]
    for module in MODULES:
        name = Path(module).name
        files.append((f"lib/modules/{name}", stat.S_IFREG | 0o644, (kernel / "modules" / name).read_bytes()))
    with gzip.open(out, "wb", compresslevel=6) as f:
        for ino, (name, mode, data) in enumerate([*files, ("TRAILER!!!", 0, b"")], start=1):
            fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0)
            head = b"070701" + "".join(f"{v:08X}" for v in fields).encode() + name.encode() + b"\0"
            f.write(head + b"\0" * (-len(head) % 4) + data + b"\0" * (-len(data) % 4))


def write_rootfs_image(rootfs: Path, out: Path) -> None:
    """The rootfs directory as an ext4 file with some room to spare (no mount, no loop device)."""
    used = int(subprocess.run(["du", "-sm", str(rootfs)], capture_output=True, text=True, check=True).stdout.split()[0])
    size_mb = used + used // 4 + ROOTFS_HEADROOM_MB
    done = subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", "wrenn-root", "-d", str(rootfs), str(out), f"{size_mb}M"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise VmBuildError(f"mkfs.ext4 failed: {done.stderr.strip()[-500:]}")


def build_outputs(rootfs: Path, out: Path, kernel_cache: Path) -> None:
    """`out/` gets `vmlinux`, `initrd.img`, `rootfs.ext4` and `kernel-version`."""
    kernel = fetch_kernel(kernel_cache)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(kernel / "vmlinux", out / "vmlinux")
    shutil.copy2(kernel / "version", out / "kernel-version")
    write_initramfs(kernel, out / "initrd.img")
    write_rootfs_image(rootfs, out / "rootfs.ext4")
