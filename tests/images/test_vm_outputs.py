"""The microVM outputs of the image (kernel, initramfs, ext4 root disk) boot to a working envd under QEMU.

QEMU's own user-mode network forwards a host port to envd here; the microVM runtime puts the guest in the
capsule's network namespace instead.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SHARED_IMAGES
from tests.skips import skip_missing
from wrenn_server.hostagent.runtimes import NoRuntime, build_runtime, select_runtime
from wrenn_server.hostagent.runtimes.microvm import boot_probe
from wrenn_server.images.vm import VmBuildError, extract_vmlinux, load_order

VM = SHARED_IMAGES / "minimal" / "current" / "vm"
BOOT_TIMEOUT = 240.0  # a cold boot under emulation (TCG) takes seconds; a loaded machine more


def test_the_kernel_is_found_inside_a_bzimage_whatever_follows_it() -> None:
    elf = b"\x7fELF" + bytes(range(256)) * 40
    setup = b"MZ" + b"\x00" * 5000  # the real mode setup code before the payload
    assert extract_vmlinux(setup + gzip.compress(elf) + b"\x00trailer") == elf
    if shutil.which("lz4"):
        lz4 = subprocess.run(["lz4", "-l", "-c"], input=elf, capture_output=True, check=True).stdout
        assert extract_vmlinux(setup + lz4 + b"\x01" * 64) == elf
    with pytest.raises(VmBuildError):
        extract_vmlinux(setup + b"no kernel here")


def test_modules_load_after_what_they_depend_on() -> None:
    modules = {
        "virtio_net": b"\x7fELF...\0license=GPL\0depends=virtio_ring,virtio,net_failover\0",
        "net_failover": b"\0depends=failover\0",
        "failover": b"\0depends=\0",
        "virtio": b"\0depends=virtio_ring\0",
        "virtio_ring": b"\0depends=\0",
    }
    order = load_order(modules)
    assert sorted(order) == sorted(modules)
    for name, deps in (("virtio_net", ["virtio_ring", "virtio", "net_failover"]), ("virtio", ["virtio_ring"])):
        assert all(order.index(dep) < order.index(name) for dep in deps)
    with pytest.raises(VmBuildError):
        load_order({"a": b"\0depends=b\0"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    if not (VM / "vmlinux").is_file():
        manifest = json.loads((SHARED_IMAGES / "minimal" / "current" / "manifest.json").read_text())
        skip_missing("image", f"the image has no microVM outputs: {manifest.get('vm_error', 'rebuild it')}")
    disk = tmp_path / "disk.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(VM / "rootfs.ext4"), str(disk), "3G"],
        check=True,
    )
    port, console = _free_port(), tmp_path / "console.log"
    args = "console=ttyS0 nokaslr tsc_early_khz=2000000 panic=-1 quiet wrenn.net=10.0.2.15/24,10.0.2.2 wrenn.id=vm-test"
    qemu = subprocess.Popen(
        [
            "qemu-system-x86_64", "-M", "microvm,pit=on", "-accel", "tcg", "-cpu", "max", "-m", "512", "-smp", "1",
            "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-serial", f"file:{console}",
            "-kernel", str(VM / "vmlinux"), "-initrd", str(VM / "initrd.img"), "-append", args,
            "-drive", f"id=root,file={disk},format=qcow2,if=none", "-device", "virtio-blk-device,drive=root",
            "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:49983", "-device", "virtio-net-device,netdev=net0",
        ],  # fmt: skip
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # the guest's console goes to its file
    )
    try:
        yield port, console
    finally:
        qemu.kill()
        qemu.wait()


def _envd(port: int, path: str, body: dict[str, object] | None = None, timeout: float = 60) -> dict[str, object]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method="GET" if data is None else "POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return dict(json.loads(resp.read()))


def _run(port: int, script: str) -> str:
    out = _envd(port, "/process/start", {"cmd": "/bin/sh", "args": ["-c", script], "mode": "run"})
    assert out["exit_code"] == 0, out
    return base64.b64decode(str(out["stdout"])).decode()


def test_the_microvm_image_boots_to_envd(vm: tuple[int, Path]) -> None:
    port, console = vm
    deadline = time.monotonic() + BOOT_TIMEOUT
    while True:
        try:
            health = _envd(port, "/health", timeout=5)
            break
        except OSError:
            tail = console.read_text(errors="replace")[-1500:] if console.exists() else ""
            assert time.monotonic() < deadline, f"envd never answered; console:\n{tail}"
            time.sleep(1)
    assert "version" in health
    assert "wrenn-init: starting envd" in console.read_text(errors="replace")
    kernel = (VM / "kernel-version").read_text().strip()
    assert _run(port, "uname -r").strip() == kernel
    assert _run(port, "cat /run/wrenn/.WRENN_SANDBOX_ID").strip() == "vm-test"
    assert _run(port, "ip -4 -o addr show eth0").split()[3] == "10.0.2.15/24"
    deadline = time.monotonic() + 120
    while int(_run(port, "df -m --output=size / | tail -1")) < 2500:  # grown to the 3 GiB disk in the background
        assert time.monotonic() < deadline, "the root filesystem was not grown to the disk's size"
        time.sleep(2)


def test_an_image_without_a_kernel_stops_the_microvm_runtime_with_the_reason(tmp_path: Path) -> None:
    """Said by the runtime's probe, at agent start (choosing the runtime) and by `wrenn doctor`."""
    current = tmp_path / "images" / "minimal" / "current"
    current.mkdir(parents=True)
    (current / "manifest.json").write_text(json.dumps({"vm_error": "no kernel package linux-image-cloud-amd64"}))
    probe = asyncio.run(build_runtime("microvm", tmp_path).probe())
    assert not probe.available
    assert "no guest kernel" in probe.reason and "linux-image-cloud-amd64" in probe.reason
    with pytest.raises(NoRuntime, match="microvm: no guest kernel"):
        asyncio.run(select_runtime("microvm", tmp_path))
    env = {**os.environ, "WRENN_DIR": str(tmp_path), "COLUMNS": "400"}
    doctor = subprocess.run(
        [sys.executable, "-m", "wrenn_server.cli", "doctor"], env=env, capture_output=True, text=True, check=True
    )
    row = next(line for line in doctor.stdout.splitlines() if "runtime microvm" in line)
    assert " no " in row and "no guest kernel" in row
    assert any("microVM accelerator" in line for line in doctor.stdout.splitlines())


def test_the_boot_probe_needs_the_kernel_to_print_its_banner(tmp_path: Path) -> None:
    """How the runtime confirms hardware KVM before using it; shown here under emulation, which always runs."""
    if not (VM / "vmlinux").is_file():
        skip_missing("image", "the image has no microVM kernel")
    booted, seen = asyncio.run(boot_probe("qemu-system-x86_64", VM / "vmlinux", "tcg"))
    assert booted, seen
    garbage = tmp_path / "vmlinux"
    garbage.write_bytes(b"\x7fELF" + bytes(4096))
    booted, seen = asyncio.run(boot_probe("qemu-system-x86_64", garbage, "tcg"))
    assert not booted and seen
