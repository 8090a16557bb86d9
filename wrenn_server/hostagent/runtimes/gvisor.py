"""gVisor back end: each capsule is a `runsc` container in the capsule network namespace.

The root filesystem is a host overlayfs mount: the template's rootfs directory as the read-only lower layer and
a per-capsule upper directory, so a capsule's changes are plain files on disk and survive a checkpoint. The upper
directory is on the capsule's own disk, a loop-mounted ext4 file of its `disk_size_mb` (`loopdisk.py`), where
this host has loop devices.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import platform
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ...proto.envd import default_pids_max
from .. import proc
from ..errors import RuntimeFailure
from ..kvm import probe_kvm
from ..layout import CapsuleDir, TemplateDir
from .base import NO_CAPABILITIES, Capabilities, Probe, RuntimeState, SandboxSpec, Usage
from .loopdisk import LoopDisks

INIT = "/usr/local/bin/wrenn-init"
# runsc refuses a sandbox network when it believes it runs in the root network namespace, which it decides
# by looking for /proc/sys/net/core/rmem_default; every namespace has that file on recent kernels. Hiding
# /proc/sys/net in a private mount namespace lets runsc use the namespace we prepared, unchanged.
_HIDE_NET_SYSCTL = 'mount -t tmpfs none /proc/sys/net && exec "$@"'
# What a capsule's root holds inside gVisor's kernel (docs/containment.md, "Privileges"): Docker's default set,
# plus SYS_ADMIN (envd mounts and manages the guest's cgroups), SYS_PTRACE (strace, gdb), SYS_NICE and
# SYS_RESOURCE. Not NET_ADMIN (gVisor's network is set up by runsc from outside; nothing inside configures it)
# nor DAC_READ_SEARCH (open_by_handle_at; root reads everything through DAC_OVERRIDE anyway). NET_RAW stays
# listed, but runsc removes it unless run with --net-raw: ping uses ICMP datagram sockets.
_CAPS = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SYS_CHROOT",
    "CAP_MKNOD",
    "CAP_AUDIT_WRITE",
    "CAP_SETFCAP",
    "CAP_SYS_ADMIN",
    "CAP_SYS_PTRACE",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
]
# The sentry's own memory counts against the cgroup, and a sandbox that hits the cgroup limit is killed whole
# (gVisor issues #2533, #2535). envd's memory watcher ends the largest guest process once the guest's own size
# is used up; the headroom is what the sandbox may use on the host beyond the guest's size: the sentry's own
# memory, what the guest allocates until the watcher's next sample, and ~0.5 MiB of host memory per guest
# process (page tables and stubs of the ptrace platform), for as many as the guest's task limit allows.
# MemTotal in the guest is the cgroup limit runsc finds when it starts the sandbox, so the spec asks for the
# guest's size and the headroom is added once the sandbox runs (see _add_headroom).
_CGROUP_HEADROOM_MB = 128
_HOST_KIB_PER_TASK = 512
# The guest's tasks are limited inside it (envd's user cgroup, enforced by the sentry). The host's pids limit
# counts host threads: ~12 per guest process under ptrace, and they keep growing while processes churn (a fork
# bomb: ~400 a second, measured) until the Go runtime of the sentry dies at 10,000. The limit sits just under
# that, so that the host refuses a thread before the sentry's own cap ends it.
_HOST_PIDS_MAX = 9000


def headroom_mb(memory_mb: int) -> int:
    return _CGROUP_HEADROOM_MB + default_pids_max(memory_mb) * _HOST_KIB_PER_TASK // 1024


@dataclass(frozen=True)
class GVisorConfig:
    state_dir: Path
    disks_dir: Path  # the capsules' own disks (see `loopdisk.py`)
    sandboxes_dir: Path
    runsc: str = "runsc"


class GVisorRuntime:
    name: ClassVar[str] = "gvisor"

    def __init__(self, config: GVisorConfig) -> None:
        self._config = config
        self._disks = LoopDisks(config.disks_dir, config.sandboxes_dir)
        self.capabilities = NO_CAPABILITIES
        # Measured here: ptrace beats systrap (runsc 2023+) on VMs without hardware virtualisation.
        self._platform = "kvm" if probe_kvm().usable else "ptrace"

    def _runsc(self, *args: str) -> list[str]:
        return [self._config.runsc, "--root", str(self._config.state_dir), *args]

    async def probe(self) -> Probe:
        binary = shutil.which(self._config.runsc)
        if binary is None:
            return Probe(False, "runsc is not installed (Debian package `runsc`)")
        if os.geteuid() != 0:
            return Probe(False, "runsc needs root")
        try:
            version = await proc.run([binary, "--version"], timeout=10)
        except RuntimeFailure as exc:
            return Probe(False, f"runsc does not run: {exc.message}")
        first = version.stdout.decode().splitlines()[0] if version.stdout else "unknown"
        no_disks = await self._disks.works()
        self.capabilities = Capabilities(
            pause_with_memory=True,
            snapshot=True,
            hardware_acceleration=self._platform == "kvm",  # the Sentry on hardware KVM; ptrace traps instead
            disk_size_limit=no_disks is None,  # a loop-mounted ext4 of its size holds its writes
            checkpoint_keeps_connections=False,  # runsc 20221219 fails (and kills the guest) on one
            guest_sees_vcpus=False,  # the Sentry shows the host's CPUs; the cgroup caps the time it gets
            guest_kernel=False,  # the Sentry: no serial console, no sysrq, no kernel panic
            memory_file=False,
            layered_files=True,  # an overlay: the capsule's changes are plain files in its upper directory
            guest_capabilities_limited=True,  # the OCI spec's list (docs/containment.md, "Privileges")
            restores=frozenset({self.name}),
        )
        # A checkpoint holds the guest's capabilities: one made with others is not restored (see pool.py's stamp).
        caps = hashlib.sha256(" ".join(_CAPS).encode()).hexdigest()[:8]
        details = {"platform": self._platform, "binary": binary, "capabilities": caps}
        details["disk_size_limit"] = "loop-mounted ext4" if no_disks is None else f"none: {no_disks}"
        return Probe(True, f"{first}, platform {self._platform}", details, self.capabilities)

    async def create(self, spec: SandboxSpec) -> None:
        self._config.state_dir.mkdir(parents=True, exist_ok=True)
        template, capsule = TemplateDir(spec.template_dir), CapsuleDir(spec.workdir)
        capsule.path.mkdir(parents=True, exist_ok=True)
        if self.capabilities.disk_size_limit and spec.disk_size_mb > 0:
            await self._disks.attach(capsule, spec.disk_size_mb)
        rootfs = await _mount_overlay(template.layers(), capsule)
        bundle = capsule.bundle
        bundle.mkdir(exist_ok=True)
        (bundle / "config.json").write_text(json.dumps(_oci_spec(spec, rootfs)))
        checkpoint = None if spec.cold else template.checkpoint()
        if checkpoint is None:
            command = ["run", "--detach", "--bundle", str(bundle), spec.sandbox_id]
        else:  # a snapshot template: its guest continues, processes and all, in this new capsule
            command = ["restore", "--detach", "--image-path", str(checkpoint.path), "--bundle", str(bundle)]
            command.append(spec.sandbox_id)
        await self._run_detached(command, capsule)
        _add_headroom(spec)

    async def _run_detached(self, command: list[str], capsule: CapsuleDir) -> None:
        argv = [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            _HIDE_NET_SYSCTL,
            "sh",
            *self._runsc(
                "--platform",
                self._platform,
                "--network",
                "sandbox",
                # Writes go straight to the capsule's upper directory on the host, as plain files.
                "--overlay2",
                "none",
                *command,
            ),
        ]
        console = capsule.console
        # The container inherits runsc's stdio, so it must be a file: a pipe would never reach EOF.
        # Its own session keeps a Ctrl-C aimed at `wrenn up` (the terminal's process group) away from it.
        with console.open("ab") as log:
            started = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
            try:
                code = await started.wait()
            except asyncio.CancelledError:
                # runsc goes on making the container: see it through, so that the clean-up after the cancel
                # finds the container and removes it, instead of leaving it running, no one's.
                await started.wait()
                raise
        if code != 0:
            tail = console.read_bytes()[-2000:].decode(errors="replace").strip()
            raise RuntimeFailure(f"runsc could not start the capsule: {tail}")

    async def destroy(self, sandbox_id: str, workdir: Path) -> None:
        if _frozen(sandbox_id):  # a frozen process cannot die: it would hold its mounts and disk for ever
            with contextlib.suppress(RuntimeFailure):
                await _set_frozen(sandbox_id, False)
        await proc.run(self._runsc("delete", "--force", sandbox_id), check=False, timeout=30)
        capsule = CapsuleDir(workdir)
        await _unmount(capsule.rootfs)
        await self._disks.detach(capsule)

    async def state(self, sandbox_id: str) -> RuntimeState:
        done = await proc.run(self._runsc("state", sandbox_id), check=False, timeout=15)
        if done.returncode != 0:
            return RuntimeState.MISSING
        status = json.loads(done.stdout).get("status")
        return {
            "running": RuntimeState.RUNNING,
            "paused": RuntimeState.FROZEN,
        }.get(status, RuntimeState.STOPPED)

    def exited(self, sandbox_id: str) -> bool:
        pid = _sandbox_pid(self._config.state_dir, sandbox_id)
        if pid is None:  # not known here (yet): not a reason to call it dead
            return False
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        return stat[stat.rfind(")") + 2] == "Z"

    def end_cause(self, sandbox_id: str) -> str:
        # The sandbox's memory cgroup counts the kills of the host's OOM killer (gVisor issues #2533, #2535).
        try:
            text = (_CGROUPS / "memory" / "wrenn" / sandbox_id / "memory.oom_control").read_text()
        except OSError:
            return ""
        counts = dict(line.split(maxsplit=1) for line in text.splitlines() if " " in line)
        killed = counts.get("oom_kill", "0").strip()
        return "oom: its memory went over its limit, and the host's OOM killer ended it" if killed != "0" else ""

    async def usage(self, sandbox_id: str) -> Usage | None:
        base = Path("/sys/fs/cgroup")
        try:
            cpu_ns = int((base / "cpuacct" / "wrenn" / sandbox_id / "cpuacct.usage").read_text())
            mem = int((base / "memory" / "wrenn" / sandbox_id / "memory.usage_in_bytes").read_text())
        except (OSError, ValueError):
            return None
        return Usage(cpu_ns / 1e9, mem)

    async def checkpoint(self, sandbox_id: str, checkpoint_dir: Path) -> None:
        # The checkpoint stops the sandbox: a failed one takes the sandbox with it (runsc 20221219), which is
        # why the manager only asks once the guest holds no network connection (see envd /snapshot/prepare).
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        command = self._runsc("checkpoint", "--image-path", str(checkpoint_dir), sandbox_id)
        await proc.run(command, timeout=120, started=_thaw_once_asked(sandbox_id) if _frozen(sandbox_id) else None)
        await proc.run(self._runsc("delete", "--force", sandbox_id), check=False, timeout=30)  # frees its memory

    async def save_files(self, workdir: Path, template_dir: Path) -> None:
        capsule = CapsuleDir(workdir)
        # An ended capsule's disk was unmounted with its guest: mounted for the copy, and only for it.
        unmounted = capsule.disk_link.is_symlink() and not os.path.ismount(capsule.disk_link.resolve())
        if unmounted:
            await self._disks.mount(capsule)
        try:
            await proc.run(["cp", "-a", "--reflink=auto", str(capsule.upper), str(TemplateDir(template_dir).upper)])
        finally:
            if unmounted:
                await self._disks.detach(capsule)

    async def restore(self, spec: SandboxSpec, checkpoint_dir: Path) -> None:
        capsule = CapsuleDir(spec.workdir)
        if capsule.disk_link.is_symlink():  # both mounts are gone after a reboot of the host
            await self._disks.mount(capsule)
        await _mount_overlay(TemplateDir(spec.template_dir).layers(), capsule)
        bundle = capsule.bundle
        command = ["restore", "--detach", "--image-path", str(checkpoint_dir), "--bundle", str(bundle), spec.sandbox_id]
        try:
            await self._run_detached(command, capsule)
        except RuntimeFailure:
            # A container record left behind (a checkpoint deletes it, but may have been cut short) blocks the
            # name.
            await proc.run(self._runsc("delete", "--force", spec.sandbox_id), check=False, timeout=30)
            await self._run_detached(command, capsule)
        _add_headroom(spec)

    async def freeze(self, sandbox_id: str) -> None:
        # `runsc pause` (20221219) leaves the tasks of a guest restored from a checkpoint running (a warm-pool
        # guest went on writing files through a whole pause), so the sandbox's cgroup is frozen too: every
        # process of it (sentry, gofer, guest code) stops. runsc's own pause comes first, while it can answer.
        # Frozen already (an agent settling a pause its predecessor left half-way): runsc refuses a second pause.
        paused = await proc.run(self._runsc("pause", sandbox_id), check=False, timeout=30)
        if paused.returncode != 0 and await self.state(sandbox_id) is not RuntimeState.FROZEN:
            raise RuntimeFailure(f"runsc pause failed ({paused.returncode}): {paused.output[-2000:]}")
        await _set_frozen(sandbox_id, True)

    async def thaw(self, sandbox_id: str) -> None:
        await _set_frozen(sandbox_id, False)
        await proc.run(self._runsc("resume", sandbox_id), timeout=30)

    async def close(self) -> None:
        await self._disks.close()


_CGROUPS = Path("/sys/fs/cgroup")


def _add_headroom(spec: SandboxSpec) -> None:
    """Raises the sandbox's host memory limit from the guest's size to the guest's size plus the headroom."""
    limit = (spec.memory_mb + headroom_mb(spec.memory_mb)) << 20
    v1 = _CGROUPS / "memory" / "wrenn" / spec.sandbox_id / "memory.limit_in_bytes"
    v2 = _CGROUPS / "wrenn" / spec.sandbox_id / "memory.max"
    try:
        (v1 if v1.exists() else v2).write_text(str(limit))
    except OSError as exc:
        raise RuntimeFailure(f"cannot set the memory limit of sandbox {spec.sandbox_id}: {exc}") from exc


_FREEZE_POLL_SEC, _FREEZE_WAIT_SEC = 0.002, 10.0


async def _set_frozen(sandbox_id: str, frozen: bool) -> None:
    """Freeze or thaw every process of the sandbox's cgroup (v1 freezer, or v2 `cgroup.freeze`), and wait until
    the kernel says it is done: a v1 freeze passes through FREEZING while tasks are stopped."""
    v1 = _CGROUPS / "freezer" / "wrenn" / sandbox_id / "freezer.state"
    v2 = _CGROUPS / "wrenn" / sandbox_id / "cgroup.freeze"
    if v1.exists():
        control, want, done = v1, "FROZEN" if frozen else "THAWED", v1
    elif v2.exists():
        control, want, done = v2, "1" if frozen else "0", v2.with_name("cgroup.events")
    else:
        raise RuntimeFailure(f"the cgroup of sandbox {sandbox_id} is missing: cannot {'freeze' if frozen else 'thaw'}")
    deadline = time.monotonic() + _FREEZE_WAIT_SEC
    while True:
        try:
            control.write_text(want)
            state = done.read_text()
        except OSError as exc:
            raise RuntimeFailure(f"cannot {'freeze' if frozen else 'thaw'} sandbox {sandbox_id}: {exc}") from exc
        if (state.strip() == want) if done is control else (f"frozen {want}" in state):
            return
        if time.monotonic() > deadline:
            raise RuntimeFailure(f"sandbox {sandbox_id} did not {'freeze' if frozen else 'thaw'}: {state.strip()}")
        await asyncio.sleep(_FREEZE_POLL_SEC)


def _frozen(sandbox_id: str) -> bool:
    v1 = _CGROUPS / "freezer" / "wrenn" / sandbox_id / "freezer.state"
    v2 = _CGROUPS / "wrenn" / sandbox_id / "cgroup.freeze"
    try:
        return v1.read_text().strip() == "FROZEN" if v1.exists() else v2.read_text().strip() == "1"
    except OSError:
        return False


# The system call a Go runsc waits in for the sentry's answer, once its request is written (unet polls).
_PPOLL = {"x86_64": 271, "aarch64": 73}.get(platform.machine(), -1)
_ASK_WAIT_SEC = 5.0


def _thaw_once_asked(sandbox_id: str) -> Callable[[int], Awaitable[None]]:
    """For a checkpoint of a frozen guest: the sentry must run to answer it, but its guest must not. The
    cgroup is thawed only once runsc's request waits at the sentry, so the checkpoint stops the guest's tasks
    first thing, rather than letting them run for the ~50 ms runsc takes to start and ask."""

    async def thaw(pid: int) -> None:
        deadline = time.monotonic() + _ASK_WAIT_SEC
        while time.monotonic() < deadline and not _waits_for_answer(pid):
            await asyncio.sleep(0.002)
        await _set_frozen(sandbox_id, False)

    return thaw


def _waits_for_answer(pid: int) -> bool:
    """Whether a thread of the process sits in ppoll (or the process is gone: nothing left to wait for)."""
    try:
        threads = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return True
    for thread in threads:
        try:
            if (thread / "syscall").read_text().split()[0] == str(_PPOLL):
                return True
        except (OSError, IndexError):
            continue
    return False


def _sandbox_pid(state_dir: Path, sandbox_id: str) -> int | None:
    """The pid of the capsule's sandbox process, from the state file runsc keeps for the container."""
    for path in state_dir.glob(f"{sandbox_id}_sandbox:*.state"):
        try:
            pid = json.loads(path.read_text())["sandbox"]["pid"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return int(pid) if pid else None
    return None


async def _mount_overlay(layers: list[Path], capsule: CapsuleDir) -> Path:
    for lower in layers:
        if not lower.is_dir():
            raise RuntimeFailure(f"template layer {lower} is missing; run `wrenn image build`")
    if capsule.disk_link.is_symlink() and not os.path.ismount(capsule.disk_link.resolve()):
        # Its files would land on the host, unlimited, and its own would seem gone.
        raise RuntimeFailure(f"the disk of capsule {capsule.name} is not mounted")
    upper, work, merged = capsule.upper, capsule.overlay_work, capsule.rootfs
    for d in (upper, work, merged):
        d.mkdir(parents=True, exist_ok=True)
    if not os.path.ismount(merged):
        await proc.run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={':'.join(map(str, layers))},upperdir={upper},workdir={work}",
                str(merged),
            ]
        )
    return merged


async def _unmount(path: Path) -> None:
    """At once if nothing uses it (the disk under it can then go too), else as soon as nothing does."""
    if os.path.ismount(path):
        done = await proc.run(["umount", str(path)], check=False)
        if done.returncode != 0:
            await proc.run(["umount", "-l", str(path)], check=False)


def _oci_spec(spec: SandboxSpec, rootfs: Path) -> dict[str, Any]:
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": [INIT],
            "env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                f"WRENN_SANDBOX_ID={spec.sandbox_id}",
                f"WRENN_GUEST_MEMORY_MB={spec.memory_mb}",
            ],
            "cwd": "/",
            "capabilities": {k: _CAPS for k in ("bounding", "effective", "permitted", "inheritable")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1048576, "soft": 1048576}],
        },
        "root": {"path": str(rootfs), "readonly": False},
        "hostname": "capsule",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "nodev", "mode=1777", "size=65536k"],
            },
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]},
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "network", "path": str(spec.network.netns_path)},
            ],
            "cgroupsPath": f"/wrenn/{spec.sandbox_id}",
            "resources": {
                "memory": {"limit": spec.memory_mb << 20},  # the guest's size; see _add_headroom
                "cpu": {"quota": spec.vcpus * 100000, "period": 100000},
                "pids": {"limit": _HOST_PIDS_MAX},
            },
        },
    }
