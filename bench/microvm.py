"""The microVM runtime (QEMU `microvm`, TCG on machines without hardware KVM) through the SDK, beside raw QEMU
driven by hand over QMP on the same kernel, disk and network slot: cold boot until envd answers; create from
a snapshot template (a restore, and a warm-pool hit); pause; resume (frozen, and from its checkpoint on disk);
exec round trip. `python -m bench.microvm`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from wrenn import Capsule

from wrenn_server.hostagent.kvm import probe_kvm
from wrenn_server.hostagent.network import Network, Slot
from wrenn_server.hostagent.runtimes.microvm import IGNORE_SHARED, KERNEL_ARGS, Qmp

from .common import (
    IMAGES,
    creates_from_a_snapshot,
    emit,
    ms_since,
    pause_resume_cycles,
    platform,
    quick,
    samples,
    summary,
)


def _wait_envd(address: str, deadline: float) -> None:
    """Until envd answers /health: like the platform, which waits for an answer, not a bare TCP accept."""
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://{address}:49983/health", timeout=1).read()
            return
        except OSError:
            time.sleep(0.002)
    raise TimeoutError("envd did not answer")


VM = (IMAGES / "minimal" / "current").resolve() / "vm"


class RawVM:
    """One QEMU microvm as the runtime starts it, without the agent: its own overlay, memory file and tap."""

    def __init__(self, root: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="raw-", dir=root))
        self.network = Network(str(self.dir))  # an existing path: see common.raw_network
        self.slot: Slot = self.network.allocate()
        asyncio.run(self.network.setup(self.slot))
        ns = self.slot.capsule_ns
        for cmd in (
            "addr flush dev eth0",
            "link add br0 type bridge",
            "link set eth0 master br0",
            "link set br0 up",
            "tuntap add dev tap0 mode tap",
            "link set tap0 master br0",
            "link set tap0 up",
        ):
            subprocess.run(["ip", "-n", ns, *cmd.split()], check=True)
        disk = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(VM / "rootfs.ext4")]
        subprocess.run([*disk, str(self.dir / "disk.qcow2"), "5G"], check=True)
        self.pid = 0

    def launch(self, incoming: bool = False) -> None:
        accel = ["-accel", "kvm", "-cpu", "host"] if probe_kvm().usable else ["-accel", "tcg", "-cpu", "max"]
        g = self.slot.guest
        argv = [
            "ip", "netns", "exec", self.slot.capsule_ns, "qemu-system-x86_64",
            "-M", "microvm,pit=on,memory-backend=ram", *accel, "-smp", "1", "-m", "512M",
            "-object", f"memory-backend-file,id=ram,size=512M,mem-path={self.dir / 'mem'},share=on",
            "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-serial", f"file:{self.dir / 'console.log'}",
            "-kernel", str(VM / "vmlinux"), "-initrd", str(VM / "initrd.img"),
            "-append", f"{KERNEL_ARGS} wrenn.net={g.address}/{g.prefix_len},{g.gateway} wrenn.id=raw",
            "-drive", f"id=root,file={self.dir / 'disk.qcow2'},format=qcow2,if=none",
            "-device", "virtio-blk-device,drive=root",
            "-netdev", "tap,id=net,ifname=tap0,script=no,downscript=no",
            "-device", "virtio-net-device,netdev=net,mac=52:54:00:00:00:21",
            "-qmp", f"unix:{self.dir / 'qmp.sock'},server=on,wait=off",
            "-pidfile", str(self.dir / "pid"), "-daemonize",
        ] + (["-incoming", "defer"] if incoming else [])  # fmt: skip
        subprocess.run(argv, check=True)
        self.pid = int((self.dir / "pid").read_text())

    def qmp(self, *commands: tuple[str, dict[str, Any]], wait_migration: bool = False) -> None:
        async def run() -> None:
            async with Qmp.connect(self.dir / "qmp.sock") as q:
                for name, args in commands:
                    await q.execute(name, **args)
                if wait_migration:
                    await q.migration_done(time.monotonic() + 60, "moving")

        asyncio.run(run())

    def kill(self) -> None:
        """SIGKILL, then wait until QEMU is gone, or a zombie whose threads have all ended: only then are its
        files (the disk's write lock) and tap released (the leader shows `Z` while its threads still exit)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        while True:
            try:
                stat = Path(f"/proc/{self.pid}/stat").read_text()
                threads = len(os.listdir(f"/proc/{self.pid}/task"))
            except OSError:
                return
            if stat[stat.rfind(")") + 2] == "Z" and threads <= 1:
                return
            time.sleep(0.005)

    def remove(self) -> None:
        self.kill()
        asyncio.run(self.network.teardown(self.slot))
        shutil.rmtree(self.dir, ignore_errors=True)


def raw_figures(root: Path, n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"boot_until_envd": [], "pause": [], "restore_until_envd": [], "exec": []}
    vm = RawVM(root)
    try:
        for _ in range(samples(2, 1)):
            start = time.perf_counter()
            vm.launch()
            _wait_envd(vm.slot.host_ip, time.monotonic() + 120)
            out["boot_until_envd"].append(ms_since(start))
            vm.kill()
        vm.launch()
        _wait_envd(vm.slot.host_ip, time.monotonic() + 120)
        body = json.dumps({"cmd": "true", "mode": "run"}).encode()
        for _ in range(n):
            request = urllib.request.Request(f"http://{vm.slot.host_ip}:49983/process/start", body, method="POST")
            start = time.perf_counter()
            urllib.request.urlopen(request, timeout=30).read()
            out["exec"].append(ms_since(start))
        state = vm.dir / "state"
        for _ in range(n):
            start = time.perf_counter()
            vm.qmp(
                ("stop", {}),
                ("migrate-set-capabilities", {"capabilities": IGNORE_SHARED}),
                ("migrate", {"uri": f"exec:cat > {state}"}),
                wait_migration=True,
            )
            out["pause"].append(ms_since(start))
            vm.kill()
            start = time.perf_counter()
            vm.launch(incoming=True)
            vm.qmp(
                ("migrate-set-capabilities", {"capabilities": IGNORE_SHARED}),
                ("migrate-incoming", {"uri": f"exec:cat {state}"}),
                wait_migration=True,
            )
            vm.qmp(("cont", {}))
            _wait_envd(vm.slot.host_ip, time.monotonic() + 60)
            out["restore_until_envd"].append(ms_since(start))
    finally:
        vm.remove()
    return out


def measure(n: int | None = None) -> dict[str, Any]:
    n = n or samples(10, 2)
    results: dict[str, Any] = {}
    # The create answers `starting` after 20 s rather than 30 (the SDK's own timeout): a loaded machine's boot
    # under TCG can take that long, and the bench then waits for `running` itself.
    microvm = {"WRENN_RUNTIME": "microvm", "WRENN_CREATE_WAIT_SEC": "20"}
    with platform(**microvm, WRENN_POOL_SIZE="0", WRENN_CHECKPOINT_AFTER_SEC="0.5") as stack:
        boot = []
        for size in (400,) if quick() else (400, 416, 432):  # a size nothing prepared: the create boots the guest
            for prepared in (IMAGES / "minimal" / "current").resolve().glob(f"prepared/1x{size}x*"):
                shutil.rmtree(prepared)  # left by an earlier run
            start = time.perf_counter()
            with Capsule(memory_mb=size) as fresh:
                if fresh._info is None or fresh._info.status.value != "running":
                    fresh.wait_ready()
                boot.append(ms_since(start))
                assert (fresh._client.capsules.get(fresh.capsule_id).metadata or {}).get("start") == "boot"
        with Capsule() as capsule:
            exec_rt = []
            for _ in range(n + 5):
                start = time.perf_counter()
                capsule.commands.run("true")
                exec_rt.append(ms_since(start))
            capsule.commands.run("sleep 100000", background=True)
            pause, recent, cold = pause_resume_cycles(capsule, n)
            restore = creates_from_a_snapshot(capsule, n)
        raw = raw_figures(stack.data_dir, n)
    with platform(**microvm) as stack, Capsule() as capsule:
        template = capsule.create_snapshot().name
        Capsule(template=template).destroy()  # the first is a miss; the pool warms the template meanwhile
        hits, starts = [], []
        for _ in range(n):
            time.sleep(3)  # the pool restores its replacement in the background
            start = time.perf_counter()
            child = Capsule(template=template)
            hits.append(ms_since(start))
            starts.append((child._client.capsules.get(child.capsule_id).metadata or {}).get("start"))
            child.destroy()
            child._client.close()
        capsule._client.snapshots.delete(template)
    results["microvm"] = {
        "accelerator": "kvm" if probe_kvm().usable else "tcg",
        "sdk_cold_boot_until_running": summary(boot),
        "raw_qemu_boot_until_envd": summary(raw["boot_until_envd"]),
        "sdk_create_from_snapshot_template_restore": summary(restore),
        "sdk_create_from_snapshot_template_pool_hit": summary(hits),
        "pool_hits": starts.count("pool"),
        "raw_qemu_restore_until_envd": summary(raw["restore_until_envd"]),
        "sdk_pause": summary(pause[1:]),
        "raw_qemu_pause_stop_and_save_device_state": summary(raw["pause"]),
        "sdk_resume_recently_paused": summary(recent[1:]),
        "sdk_resume_from_checkpoint": summary(cold),
        "sdk_exec_round_trip": summary(exec_rt[5:]),
        "raw_envd_exec_round_trip": summary(raw["exec"]),
        "target": "create from template p50 <= 400 ms, pause p50 <= 50 ms, resume -> running p50 <= 300 ms (TCG)",
    }
    return results


if __name__ == "__main__":
    emit(measure())
