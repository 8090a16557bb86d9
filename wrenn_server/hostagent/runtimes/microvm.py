"""microVM back end: each capsule is a QEMU `microvm` machine in the capsule network namespace, driven over QMP.

Hardware KVM where it really works (`-accel kvm -cpu host`), software emulation (TCG) elsewhere. The guest boots
the image's kernel and initramfs; its root disk is a qcow2 overlay (`disk.qcow2`, sized by `disk_size_mb`) on
the template's read-only disk. Its network is a tap device bridged to the namespace's `eth0`, so the guest holds
the fixed guest address itself and envd, the port proxy and NAT work as with gVisor.

Guest RAM lives in a file (`mem`, mapped shared): a checkpoint saves only the device state (`stop`, then a
migration with `x-ignore-shared`, ~10 ms) and keeps the memory file; a restore starts QEMU with `-incoming defer`
on the same file. A checkpoint directory holds `checkpoint.img` (device state), `memory` and `vm.json` (the machine
it needs). A capsule made from a snapshot template gets its own copy of the template's memory (`cp --reflink=auto`:
shared blocks on a reflink volume, a sparse copy elsewhere), so its own checkpoints stay as small and fast as any
other. QEMU daemonizes: a capsule outlives the agent, which finds it again through `qemu.pid` and `qmp.sock`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .. import proc
from ..errors import RuntimeFailure
from ..kvm import probe_kvm
from ..layout import CapsuleDir, CheckpointDir, TemplateDir
from .base import NO_CAPABILITIES, Capabilities, Probe, RuntimeState, SandboxSpec, Usage

GUEST_MAC = "52:54:00:00:00:21"  # one per namespace, so every guest may have the same one (checkpoints move)
KERNEL_ARGS = "console=ttyS0 nokaslr tsc_early_khz=2000000 panic=-1 quiet"
MIGRATION_TIMEOUT = 120.0
ACCELERATORS = {"kvm": ["-accel", "kvm", "-cpu", "host"], "tcg": ["-accel", "tcg", "-cpu", "max"]}
IGNORE_SHARED = [{"capability": "x-ignore-shared", "state": True}]  # memory stays in its file, not the state
_QMP_SOCKET_MAX = 107  # sun_path


class QmpError(RuntimeFailure):
    pass


class Qmp:
    """One QMP session: the greeting, capabilities negotiation, then commands one at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, socket: Path, timeout: float = 10.0) -> Any:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(socket)), timeout)
        except (OSError, TimeoutError) as exc:
            raise QmpError(f"QEMU's control socket {socket} does not answer: {exc}") from exc
        session = cls(reader, writer)
        try:
            await session._reply(timeout)  # greeting
            await session.execute("qmp_capabilities")
            yield session
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _reply(self, timeout: float) -> dict[str, Any]:
        while True:
            try:
                line = await asyncio.wait_for(self._reader.readline(), timeout)
            except TimeoutError:
                raise QmpError(f"QEMU did not answer within {timeout:.0f} s") from None
            except OSError as exc:
                raise QmpError(f"QEMU's control socket failed: {exc!r}") from exc
            if not line:
                raise QmpError("QEMU closed its control socket")
            message: dict[str, Any] = json.loads(line)
            if "event" not in message:
                return message

    async def execute(self, command: str, timeout: float = 30.0, **arguments: Any) -> Any:
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        try:
            self._writer.write(json.dumps(request).encode() + b"\n")
            await self._writer.drain()
            reply = await self._reply(timeout)
        except (OSError, ValueError) as exc:  # QEMU exited (a failed load ends it) or wrote garbage
            raise QmpError(f"QEMU stopped answering during {command}: {exc!r}") from exc
        if "error" in reply:
            raise QmpError(f"QEMU refused {command}: {reply['error'].get('desc', reply['error'])}")
        return reply.get("return")

    async def migration_done(self, deadline: float, what: str) -> None:
        while True:
            migration = await self.execute("query-migrate")
            status = migration.get("status", "none")
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise QmpError(f"{what} the guest's state failed: {migration.get('error-desc', status)}")
            if time.monotonic() > deadline:
                raise QmpError(f"{what} the guest's state did not finish within {MIGRATION_TIMEOUT:.0f} s")
            await asyncio.sleep(0.002)


@dataclass(frozen=True)
class MicroVMConfig:
    sandboxes_dir: Path  # a capsule's files are in `<sandboxes_dir>/<name>/`, as the agent lays them out
    image_dir: Path  # the current base image, whose `vm/` holds the guest kernel
    qemu: str = "qemu-system-x86_64"


class MicroVMRuntime:
    name: ClassVar[str] = "microvm"

    def __init__(self, config: MicroVMConfig) -> None:
        self._config = config
        self.capabilities = NO_CAPABILITIES
        self._kvm = probe_kvm()
        self.accelerator = "kvm" if self._kvm.usable else "tcg"  # KVM confirmed by a boot in `probe`
        self._kvm_checked = False

    @property
    def _accel(self) -> list[str]:
        return ACCELERATORS[self.accelerator]

    async def probe(self) -> Probe:
        binary = shutil.which(self._config.qemu)
        if binary is None:
            return Probe(False, f"{self._config.qemu} is not installed (Debian package `qemu-system-x86`)")
        if shutil.which("qemu-img") is None:
            return Probe(False, "qemu-img is not installed (Debian package `qemu-utils`)")
        if os.geteuid() != 0:
            return Probe(False, "the microVM runtime needs root (tap devices in network namespaces)")
        if not Path("/dev/net/tun").exists():
            return Probe(False, "/dev/net/tun is missing: no tap devices on this machine")
        try:
            version = await proc.run([binary, "--version"], timeout=10)
        except RuntimeFailure as exc:
            return Probe(False, f"QEMU does not run: {exc.message}")
        first = version.stdout.decode().splitlines()[0] if version.stdout else "QEMU"
        image = TemplateDir(self._config.image_dir)
        vm = image.vm
        if not vm.kernel.is_file() or not vm.disk.is_file():
            return Probe(False, f"no guest kernel and disk in {vm.path}: {_vm_error(image)}")
        kernel = vm.kernel_version.read_text().strip() if vm.kernel_version.is_file() else "?"
        details = {"binary": binary, "kernel": kernel}
        if self._kvm.usable and not self._kvm_checked:
            self._kvm_checked = True
            booted, seen = await boot_probe(binary, vm.kernel, "kvm")
            if not booted:
                self.accelerator = "tcg"
                details["kvm"] = f"hardware KVM did not boot the guest kernel ({seen}); using emulation"
        details["accelerator"] = self.accelerator
        if self.accelerator == "tcg":
            details["note"] = "software emulation: no hardware KVM here, guests run ~15x slower than on KVM"
        reason = f"{first}, accelerator {self.accelerator}, kernel {kernel}"
        self.capabilities = Capabilities(
            pause_with_memory=True,
            snapshot=True,
            hardware_acceleration=self.accelerator == "kvm",  # only once a guest kernel booted on it
            disk_size_limit=True,  # the qcow2 overlay has the size asked
            checkpoint_keeps_connections=True,
            guest_sees_vcpus=True,
            guest_kernel=True,
            memory_file=True,  # `memory-backend-file,share=on`: a checkpoint moves the file
            layered_files=False,  # a qcow2 disk over the template's
            restores=frozenset({self.name}),
        )
        reason = f"{reason}; {details['kvm']}" if "kvm" in details else reason
        return Probe(True, reason, details, self.capabilities)

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> None:
        template, capsule = TemplateDir(spec.template_dir), CapsuleDir(spec.workdir)
        checkpoint = template.checkpoint()
        if checkpoint is not None and not checkpoint.machine.is_file():
            raise RuntimeFailure(f"template {spec.template_dir.name} was saved by another runtime, not by microvm")
        capsule.path.mkdir(parents=True, exist_ok=True)
        if spec.cold and capsule.disk.is_file():  # its own disk, as it is: a fresh boot of it
            await self._launch(spec, _machine(spec), incoming=None)
            return
        # A snapshot template's own disk (a files-only one, of a capsule that ended, has no checkpoint).
        base = template.disk if checkpoint is not None or template.disk.is_file() else template.image().disk
        if not base.is_file():
            raise RuntimeFailure(f"the template's disk {base} is missing; run `wrenn image build`")
        base_format = "qcow2" if base.suffix == ".qcow2" else "raw"
        overlay = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", base_format, "-b", str(base)]
        size = max(spec.disk_size_mb * 2**20, _virtual_size(base))  # never smaller than the filesystem on it
        await proc.run([*overlay, str(capsule.disk), str(size)], timeout=30)
        if checkpoint is None:
            await self._launch(spec, _machine(spec), incoming=None)
            return
        await _copy(checkpoint.memory, capsule.memory)
        await self._launch(spec, _read_machine(checkpoint.machine), incoming=checkpoint.image)

    async def restore(self, spec: SandboxSpec, checkpoint_dir: Path) -> None:
        capsule, checkpoint = CapsuleDir(spec.workdir), CheckpointDir(checkpoint_dir)
        await self._kill(capsule)  # a restore an agent left half-way (QEMU still waiting for its state)
        memory, machine = capsule.memory, checkpoint.machine
        if checkpoint != capsule.checkpoint:  # the snapshot it was just made into: the template keeps its memory
            await _copy(checkpoint.memory, memory)
        elif checkpoint.memory.exists():  # its own checkpoint: the memory file goes back where it was
            os.replace(checkpoint.memory, memory)
        elif not memory.exists():  # (already back, when an earlier restore was cut short)
            raise RuntimeFailure(f"the capsule's memory file is missing from {checkpoint_dir}")
        if not machine.exists():
            machine = capsule.machine
        await self._launch(spec, _read_machine(machine), incoming=checkpoint.image)

    async def _launch(self, spec: SandboxSpec, machine: dict[str, int], incoming: Path | None) -> None:
        capsule = CapsuleDir(spec.workdir)
        kernel = TemplateDir(spec.template_dir).image()
        for needed in (kernel.kernel, kernel.initrd):
            if not needed.is_file():
                raise RuntimeFailure(f"the guest kernel {needed} is missing; run `wrenn image build`")
        qmp = capsule.qmp_socket
        if len(str(qmp)) > _QMP_SOCKET_MAX:
            raise RuntimeFailure(f"the data directory's path is too long for QEMU's control socket: {qmp}")
        await _plumb(spec)
        for stale in (qmp, capsule.qemu_pid):
            stale.unlink(missing_ok=True)
        net = spec.network
        args = f"{KERNEL_ARGS} wrenn.net={net.address}/{net.prefix_len},{net.gateway} wrenn.id={spec.sandbox_id}"
        memory = machine["memory_mb"]
        argv = [
            "ip", "netns", "exec", str(net.netns_path.name),
            self._config.qemu,
            "-name", spec.sandbox_id,
            "-M", "microvm,pit=on,memory-backend=ram",
            *self._accel,
            "-smp", str(machine["vcpus"]),
            "-m", f"{memory}M",
            "-object", f"memory-backend-file,id=ram,size={memory}M,mem-path={capsule.memory},share=on",
            "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-chardev", f"file,id=console,path={capsule.console},append=on",
            "-serial", "chardev:console",
            "-kernel", str(kernel.kernel), "-initrd", str(kernel.initrd), "-append", args,
            "-drive", f"id=root,file={capsule.disk},format=qcow2,if=none,cache=writeback,discard=unmap",
            "-device", "virtio-blk-device,drive=root",
            "-netdev", "tap,id=net,ifname=tap0,script=no,downscript=no",
            "-device", f"virtio-net-device,netdev=net,mac={GUEST_MAC}",
            "-qmp", f"unix:{qmp},server=on,wait=off",
            "-pidfile", str(capsule.qemu_pid),
            "-daemonize",
        ]  # fmt: skip
        if incoming is not None:
            argv += ["-incoming", "defer"]
        capsule.machine.write_text(json.dumps(machine))
        launcher = asyncio.ensure_future(proc.run(argv, timeout=60, check=False))
        try:
            done = await asyncio.shield(launcher)
        except asyncio.CancelledError:  # QEMU starts all the same: wait for it, so that it can be stopped
            with contextlib.suppress(Exception):
                await launcher
            await self._kill(capsule)
            raise
        if done.returncode != 0:
            raise RuntimeFailure(f"QEMU could not start the capsule: {done.output[-1500:]}")
        if incoming is None:
            return
        try:
            async with Qmp.connect(qmp) as q:
                await q.execute("migrate-set-capabilities", capabilities=IGNORE_SHARED)
                await q.execute("migrate-incoming", uri=f"exec:cat {_quote(incoming)}")
                await q.migration_done(time.monotonic() + MIGRATION_TIMEOUT, "loading")
                # The guest was stopped when its state was saved, and the state says so: it waits for `cont`.
                await q.execute("cont")
        except RuntimeFailure:
            await self._kill(capsule)
            raise

    def _capsule(self, sandbox_id: str) -> CapsuleDir:
        return CapsuleDir(self._config.sandboxes_dir / sandbox_id)

    async def destroy(self, sandbox_id: str, workdir: Path) -> None:
        """A clean stop (QMP `quit`: QEMU ends at once, its files closed); a forced kill when it does not answer."""
        capsule = CapsuleDir(workdir)
        pid = _pid(capsule)
        if pid is not None and _is_qemu(pid):
            with contextlib.suppress(RuntimeFailure):
                async with Qmp.connect(capsule.qmp_socket, timeout=1) as q:
                    await q.execute("quit", timeout=1)
            if await _gone(pid, 2.0):
                capsule.qemu_pid.unlink(missing_ok=True)
                return
        await self._kill(capsule)

    async def _kill(self, capsule: CapsuleDir) -> None:
        pid = _pid(capsule) or _find_qemu(capsule)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        await _gone(pid, 5.0)
        capsule.qemu_pid.unlink(missing_ok=True)

    async def state(self, sandbox_id: str) -> RuntimeState:
        capsule = self._capsule(sandbox_id)
        pid = _pid(capsule)
        if pid is None or not _is_qemu(pid):
            return RuntimeState.MISSING
        try:
            async with Qmp.connect(capsule.qmp_socket, timeout=5) as q:
                status = (await q.execute("query-status"))["status"]
        except (RuntimeFailure, ValueError):
            return RuntimeState.STOPPED
        if status == "running":
            return RuntimeState.RUNNING
        # `paused` is a freeze; `postmigrate` a checkpoint whose QEMU had not quit yet; both keep the guest intact.
        return RuntimeState.FROZEN if status in ("paused", "postmigrate", "finish-migrate") else RuntimeState.STOPPED

    def end_cause(self, sandbox_id: str) -> str:
        return ""  # the guest's own kernel handles its memory; its console (in the end reason) says the rest

    def exited(self, sandbox_id: str) -> bool:
        pid = _pid(self._capsule(sandbox_id))
        return pid is None or not _is_qemu(pid)

    async def usage(self, sandbox_id: str) -> Usage | None:
        pid = _pid(self._capsule(sandbox_id))
        if pid is None:
            return None
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return None
        fields = stat[stat.rfind(")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        rss_kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        return Usage(cpu, rss_kb * 1024)

    async def freeze(self, sandbox_id: str) -> None:
        capsule = self._capsule(sandbox_id)
        async with Qmp.connect(capsule.qmp_socket) as q:
            await q.execute("stop")

    async def thaw(self, sandbox_id: str) -> None:
        capsule = self._capsule(sandbox_id)
        moved = capsule.checkpoint.memory  # a checkpoint cut short after moving the memory file
        if not capsule.memory.exists() and moved.exists():
            os.replace(moved, capsule.memory)
        async with Qmp.connect(capsule.qmp_socket) as q:
            await q.execute("cont")

    async def close(self) -> None:
        return None  # it keeps nothing for guests to come

    async def checkpoint(self, sandbox_id: str, checkpoint_dir: Path) -> None:
        """`checkpoint.img` appears last, complete, with the memory beside it: an agent killed on the way leaves
        either a whole checkpoint or a guest that `state` finds paused and `thaw` continues."""
        capsule, checkpoint = self._capsule(sandbox_id), CheckpointDir(checkpoint_dir)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        image, partial = checkpoint.image, checkpoint.partial_image
        async with Qmp.connect(capsule.qmp_socket) as q:
            await q.execute("stop")
            await q.execute("migrate-set-capabilities", capabilities=IGNORE_SHARED)
            await q.execute("migrate", uri=f"exec:cat > {_quote(partial)}")
            await q.migration_done(time.monotonic() + MIGRATION_TIMEOUT, "saving")
        memory = checkpoint.memory
        shutil.copyfile(capsule.machine, checkpoint.machine)
        await asyncio.to_thread(_move, capsule.memory, memory)  # the stopped QEMU keeps its mapping
        await asyncio.to_thread(_sync, [memory, partial, checkpoint.machine])
        os.replace(partial, image)
        await asyncio.to_thread(_sync, [image])
        await self._kill(capsule)  # its memory is all in the file, which a killed QEMU leaves complete

    async def save_files(self, workdir: Path, template_dir: Path) -> None:
        disk = TemplateDir(template_dir).disk
        await proc.run(["cp", "--reflink=auto", "--sparse=always", str(CapsuleDir(workdir).disk), str(disk)])
        await asyncio.to_thread(_sync, [disk])


async def boot_probe(qemu: str, vmlinux: Path, accelerator: str) -> tuple[bool, str]:
    """Whether the guest kernel boots under `accelerator`: it must print its banner (then it panics, having
    no root disk, and QEMU ends). A `/dev/kvm` that cannot run a stock kernel fails here."""
    argv = [
        qemu, "-M", "microvm,pit=on", *ACCELERATORS[accelerator], "-m", "128M",
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio",
        "-kernel", str(vmlinux), "-append", "console=ttyS0 nokaslr tsc_early_khz=2000000 panic=-1 root=/dev/none",
    ]  # fmt: skip
    try:
        done = await proc.run(argv, timeout=60, check=False)
    except RuntimeFailure as exc:
        return False, exc.message
    if b"Linux version" in done.stdout:
        return True, "booted"
    return False, (done.stderr or done.stdout).decode(errors="replace").strip()[-300:] or "no output"


def _vm_error(image: TemplateDir) -> str:
    try:
        manifest = json.loads(image.manifest.read_text())
    except (OSError, ValueError):
        return "run `wrenn image build`"
    return str(manifest.get("vm_error") or "rebuild the image (`wrenn image build --force`)")


def _virtual_size(disk: Path) -> int:
    """The size the guest sees: a raw file's own, or the one in a qcow2 header (big-endian, at byte 24)."""
    if disk.suffix != ".qcow2":
        return disk.stat().st_size
    with disk.open("rb") as f:
        return int.from_bytes(f.read(32)[24:32], "big")


def _machine(spec: SandboxSpec) -> dict[str, int]:
    return {"vcpus": spec.vcpus, "memory_mb": spec.memory_mb}


def _read_machine(path: Path) -> dict[str, int]:
    machine: dict[str, int] = json.loads(path.read_text())
    return machine


async def _plumb(spec: SandboxSpec) -> None:
    """Bridge a tap device to the namespace's eth0; the guest, not the namespace, holds the guest address."""
    ns = spec.network.netns_path.name
    have = (await proc.run(["ip", "-n", ns, "-o", "link", "show"], check=False)).stdout.decode()
    batch = ["addr flush dev eth0"]
    if " br0:" not in have:
        batch += ["link add br0 type bridge", "link set eth0 master br0", "link set br0 up"]
    if " tap0:" not in have:
        batch += ["tuntap add dev tap0 mode tap", "link set tap0 master br0", "link set tap0 up"]
    await proc.run(["ip", "-n", ns, "-batch", "-"], input="\n".join(batch).encode() + b"\n")


async def _copy(source: Path, target: Path) -> None:
    if not source.is_file():
        raise RuntimeFailure(f"the checkpoint's memory {source} is missing")
    await proc.run(["cp", "--reflink=auto", "--sparse=always", str(source), str(target)], timeout=300)


def _move(source: Path, target: Path) -> None:
    try:
        os.replace(source, target)
    except OSError:  # another filesystem (a template directory on another volume)
        shutil.copyfile(source, target)
        source.unlink()


def _sync(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fd = os.open(paths[0].parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid(capsule: CapsuleDir) -> int | None:
    try:
        return int(capsule.qemu_pid.read_text().strip())
    except (OSError, ValueError):
        return None


async def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while _is_qemu(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


def _find_qemu(capsule: CapsuleDir) -> int | None:
    """A QEMU of this capsule whose pid file is missing (a launch cut short before QEMU wrote it)."""
    needle = f"mem-path={capsule.memory},".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes() and _is_qemu(int(entry.name)):
                return int(entry.name)
        except OSError:
            continue
    return None


def _is_qemu(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # A zombie has exited; the pid of a long-gone QEMU may have been reused by anything else.
    return stat[stat.find("(") + 1 : stat.rfind(")")].startswith("qemu-system") and stat[stat.rfind(")") + 2] != "Z"


def _quote(path: Path) -> str:
    return "'" + str(path).replace("'", "'\\''") + "'"
