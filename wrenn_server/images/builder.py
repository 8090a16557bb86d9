"""Builds the `minimal` template: Debian bookworm (debootstrap, minbase) + envd + the guest init.

Two cached stages, each keyed by a hash of its inputs so a rebuild happens only when they change:
  base   `<dir>/images/.base-<key>/rootfs`    debootstrap with the package list (slow: ~1 min)
  final  `<dir>/images/minimal/<key>/rootfs`   base + envd + wrenn-init (fast: a copy)
`<dir>/images/minimal/current` points at the newest final version. Older versions stay while capsules still use
them as their lower layer; the host agent removes unused ones.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..envd.spawn import SPAWNER
from . import shell, vm
from .divert import replace_diverted

PACKAGES = (
    "python3",
    "bash",
    "procps",
    "iproute2",
    "socat",
    "sudo",
    "curl",
    "ca-certificates",
    "git",
    "tini",
    "util-linux",
    "less",
    "nano",
    "openssh-client",
)
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
BUILDER_VERSION = "1"
TEMPLATE = "minimal"

Progress = Callable[[str, float | None], None]


@dataclass(frozen=True)
class ImagePaths:
    root: Path

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def template(self) -> Path:
        return self.images / TEMPLATE

    @property
    def current(self) -> Path:
        return self.template / "current"

    @property
    def manifest(self) -> Path:
        return self.current / "manifest.json"

    def base(self, key: str) -> Path:
        return self.images / f".base-{key}"


class BuildError(Exception):
    pass


def _envd_dir() -> Path:
    return Path(str(resources.files("wrenn_server") / "envd"))


GUEST_LIB = "usr/local/lib/wrenn"  # wrenn-init runs `python3 -m wrenn_server.envd` from here


def _guest_modules() -> list[tuple[Path, str]]:
    """envd's sources and its wire contract (proto/envd.py), each with its path under GUEST_LIB: the package
    keeps its layout in the guest, so envd's `..proto.envd` import works there as it does here."""
    package = Path(str(resources.files("wrenn_server")))
    sources = sorted([*_envd_dir().rglob("*.py"), *_envd_dir().rglob("*.c"), package / "proto" / "envd.py"])
    return [(path, f"wrenn_server/{path.relative_to(package)}") for path in sources if "__pycache__" not in path.parts]


def _init_script() -> bytes:
    return (resources.files("wrenn_server.images") / "wrenn-init.sh").read_bytes()


def _shim_source() -> bytes:
    return (resources.files("wrenn_server.images") / "statx-shim.c").read_bytes()


def base_key() -> str:
    text = json.dumps([BUILDER_VERSION, SUITE, MIRROR, PACKAGES])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def final_key() -> str:
    h = hashlib.sha256(base_key().encode())
    h.update(_init_script())
    h.update(_shim_source())
    for module in sorted(Path(__file__).parent.glob("*.py")):  # how the image is finished is an input too
        h.update(module.read_bytes())
    for path, guest_path in _guest_modules():
        h.update(guest_path.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def is_current(paths: ImagePaths) -> bool:
    try:
        return bool(json.loads(paths.manifest.read_text()).get("key") == final_key())
    except (OSError, ValueError):
        return False


def build(paths: ImagePaths, progress: Progress, force: bool = False) -> bool:
    """Build what is out of date; returns False when everything was already current."""
    if not force and is_current(paths):
        progress("image is up to date", 1.0)
        return False
    paths.images.mkdir(parents=True, exist_ok=True)
    key = base_key()
    base = paths.base(key)
    if force or not (base / "done").exists():
        _debootstrap(base, paths.root / "cache" / "debootstrap", progress)
    _finalize(base / "rootfs", paths, progress)
    for stale in paths.images.glob(".base-*"):
        if stale != base:
            shutil.rmtree(stale, ignore_errors=True)
    return True


def _debootstrap(base: Path, cache: Path, progress: Progress) -> None:
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    cache.mkdir(parents=True, exist_ok=True)
    argv = [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        f"--cache-dir={cache}",
        SUITE,
        str(base / "rootfs"),
        MIRROR,
    ]
    progress("debootstrap: starting", 0.0)
    # debootstrap prints one line per package and phase; the phases give a fair sense of progress.
    phases = {
        "Retrieving": 0.05,
        "Validating": 0.25,
        "Extracting": 0.35,
        "Installing": 0.5,
        "Unpacking": 0.6,
        "Configuring": 0.8,
        "Base system installed": 0.95,
    }
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as run:
        assert run.stdout is not None
        tail: list[str] = []
        for line in run.stdout:
            line = line.strip()
            tail = (tail + [line])[-20:]
            for word, frac in phases.items():
                if word in line:
                    progress(f"debootstrap: {line[3:80]}", frac * 0.9)
                    break
    if run.returncode != 0:
        raise BuildError("debootstrap failed:\n" + "\n".join(tail))
    (base / "done").write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


STATX_WRAPPED = ("ls", "dir", "vdir", "stat")


def build_spawner(out: Path) -> None:
    """envd's process helper (envd/spawner.c); static, so it maps little and starts children cheaply."""
    out.parent.mkdir(parents=True, exist_ok=True)
    source = _envd_dir() / "spawner.c"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-static", "-pthread", "-o", str(out), str(source)], check=True)


def _install_statx_shim(rootfs: Path) -> None:
    """ls and stat fail under runsc 20221219 (statx flags); see statx-shim.c."""
    lib = rootfs / "usr/local/lib/wrenn/libstatx-shim.so"
    wrapper = rootfs / "usr/local/lib/wrenn/statx-wrapper"
    # The host is Debian bookworm like the guest, so what is built here links against the same glibc.
    for out, extra in ((lib, ["-shared", "-fPIC"]), (wrapper, ["-DWRAPPER"])):
        subprocess.run(["gcc", "-O2", *extra, "-o", str(out), "-x", "c", "-"], input=_shim_source(), check=True)
    for name in STATX_WRAPPED:
        replace_diverted(rootfs, f"/usr/bin/{name}", wrapper)


def _finalize(base_rootfs: Path, paths: ImagePaths, progress: Progress) -> None:
    key = final_key()
    staging = paths.template / f".staging-{key}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    progress("copying base rootfs", 0.9)
    subprocess.run(["cp", "-a", "--reflink=auto", str(base_rootfs), str(staging / "rootfs")], check=True)
    rootfs = staging / "rootfs"
    progress("installing envd and wrenn-init", 0.97)
    for path, guest_path in _guest_modules():
        if path.suffix == ".py":
            target = rootfs / GUEST_LIB / guest_path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    build_spawner(rootfs / SPAWNER.lstrip("/"))
    init = rootfs / "usr/local/bin/wrenn-init"
    init.write_bytes(_init_script())
    init.chmod(0o755)
    _install_statx_shim(rootfs)
    shell_error = None
    try:
        dash = shell.installed_version(rootfs)
        progress(f"building a static /bin/sh (Debian's dash {dash})", 0.97)
        shell.install(rootfs, shell.build_static_dash(dash, MIRROR, SUITE, paths.root / "cache" / "shell"))
    except (shell.ShellBuildError, OSError, subprocess.CalledProcessError) as exc:
        # Capsules work the same with Debian's dynamic dash, only each command starts ~1 ms slower under gVisor.
        shell_error = str(exc)
        progress(f"/bin/sh stays Debian's dynamic dash: {exc}", 0.97)
    (rootfs / "etc/hostname").write_text("capsule\n")
    (rootfs / "etc/hosts").write_text("127.0.0.1\tlocalhost capsule\n::1\tlocalhost ip6-localhost\n")
    (rootfs / "etc/resolv.conf").write_text("nameserver 1.1.1.1\nnameserver 8.8.8.8\n")
    subprocess.run(
        ["chroot", str(rootfs), "python3", "-m", "compileall", "-q", f"/{GUEST_LIB}/wrenn_server"], check=True
    )
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for item in (rootfs / junk).glob("*"):
            if item.is_file():
                item.unlink()
    size = int(subprocess.run(["du", "-sb", str(rootfs)], capture_output=True, text=True).stdout.split()[0])
    manifest = {
        "name": TEMPLATE,
        "key": key,
        "packages": list(PACKAGES),
        "suite": SUITE,
        "size_bytes": size,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if shell_error:
        manifest["shell_error"] = shell_error
    progress("writing the microVM kernel, initramfs and disk image", 0.98)
    try:
        vm.build_outputs(rootfs, staging / "vm", paths.root / "cache" / "kernel")
        manifest["vm_kernel"] = (staging / "vm" / "kernel-version").read_text().strip()
    except (vm.VmBuildError, OSError, subprocess.CalledProcessError) as exc:
        # The gVisor runtime does not need them; the microVM runtime and `wrenn doctor` report the reason.
        manifest["vm_error"] = str(exc)
        progress(f"no microVM outputs: {exc}", 0.98)
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
    version = paths.template / key
    shutil.rmtree(version, ignore_errors=True)
    staging.rename(version)
    link = paths.template / ".current-new"
    link.unlink(missing_ok=True)
    link.symlink_to(key)
    link.rename(paths.current)
    progress("image ready", 1.0)
