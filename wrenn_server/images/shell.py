"""A statically linked build of the guest's own dash, installed as its `/bin/sh`.

Every exec goes through `/bin/sh -c` (the SDK sends its commands that way), and under gVisor's ptrace platform
each system call and page fault of a starting process is a trap into the sandbox kernel: dash's dynamic
linking alone costs ~1.2 ms of the ~3.3 ms a `sh -c true` takes to start here, and none of it with a static
binary. The build is Debian's: the source package of the exact version the image installed, Debian's patches
(among them: `sh -c` does not exec its last command, `echo -e`), Debian's configure options and hardening
flags, linked against the same glibc (host and guest are both bookworm). Debian's binary stays beside it
as `/usr/bin/dash.real` under a dpkg diversion, so a dash upgrade inside a capsule keeps the static one.

One function differs: `~user` looks the user up in /etc/passwd itself (`GETPWNAM` below) instead of through
glibc's NSS, which a static binary can only reach by loading NSS modules built for the dynamic glibc, and
those crash it (libnss_systemd does). The image's nsswitch.conf says `passwd: files`, so the answer is the same.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .divert import replace_diverted

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
DEBIAN_CONFIGURE = ("--disable-fnmatch", "--disable-lineno", "--disable-glob")  # debian/rules of dash
GETPWNAM = r"""
#include <pwd.h>
#include <stdio.h>
#include <string.h>

struct passwd *getpwnam(const char *name) {
    FILE *f = fopen("/etc/passwd", "re");
    if (!f) return NULL;
    struct passwd *pw;
    while ((pw = fgetpwent(f)) && strcmp(pw->pw_name, name) != 0) {}
    fclose(f);
    return pw;
}
"""
HOST_TOOLS = ("apt-get", "dpkg-source", "dpkg-buildflags", "autoreconf", "make", "gcc", "strip")


class ShellBuildError(Exception):
    pass


def installed_version(rootfs: Path) -> str:
    run = subprocess.run(
        ["chroot", str(rootfs), "dpkg-query", "-W", "-f=${Version}", "dash"], capture_output=True, text=True
    )
    if run.returncode != 0 or not run.stdout:
        raise ShellBuildError(f"cannot tell which dash the image has: {run.stderr.strip()}")
    return run.stdout


def build_static_dash(version: str, mirror: str, suite: str, cache: Path) -> Path:
    """The static dash of `version`, built once and kept under `cache`."""
    out = cache / f"dash-{version}" / "dash"
    if out.exists():
        return out
    missing = [tool for tool in HOST_TOOLS if shutil.which(tool) is None]
    if missing:
        raise ShellBuildError(f"missing on this host: {', '.join(missing)} (scripts/bootstrap.sh installs them)")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as work_dir:
        work = Path(work_dir)
        (work / "lists" / "partial").mkdir(parents=True)
        (work / "sources.list").write_text(f"deb-src [signed-by={KEYRING}] {mirror} {suite} main\n")
        apt = [
            "apt-get",
            "-qq",
            "-o",
            f"Dir::Etc::SourceList={work / 'sources.list'}",
            "-o",
            "Dir::Etc::SourceParts=/dev/null",
            "-o",
            f"Dir::State::Lists={work / 'lists'}",
            "-o",
            "APT::Sandbox::User=root",
        ]
        _run([*apt, "update"], work)
        _run([*apt, "source", "--download-only", f"dash={version}"], work)  # apt checks signature and hashes
        dsc = next(work.glob("dash_*.dsc"))
        _run(["dpkg-source", "-x", dsc.name, "src"], work)
        source = work / "src"
        flags_env = {**os.environ, "DEB_BUILD_MAINT_OPTIONS": "hardening=+all,-pie"}  # -static cannot be PIE
        flags = {
            name: subprocess.run(
                ["dpkg-buildflags", "--get", name], env=flags_env, capture_output=True, text=True, check=True
            ).stdout.strip()
            for name in ("CFLAGS", "CPPFLAGS", "LDFLAGS")
        }
        (work / "getpwnam.c").write_text(GETPWNAM)
        _run(["gcc", *flags["CFLAGS"].split(), "-c", "-o", "getpwnam.o", "getpwnam.c"], work)
        # Not dash's --enable-static: it makes link warnings fatal, which leaves `~user` unsupported.
        flags["LDFLAGS"] += " -static"
        flags["LIBS"] = str(work / "getpwnam.o")  # linked before libc.a, so it replaces glibc's getpwnam
        _run(["autoreconf", "-fi"], source)
        _run(["./configure", *DEBIAN_CONFIGURE, *(f"{k}={v}" for k, v in flags.items())], source)
        _run(["make", f"-j{os.cpu_count() or 1}"], source)
        out.parent.mkdir(parents=True, exist_ok=True)
        staged = out.with_suffix(".new")
        shutil.copy2(source / "src" / "dash", staged)
        _run(["strip", str(staged)], work)  # as Debian ships it
        staged.rename(out)
    return out


def install(rootfs: Path, binary: Path) -> None:
    replace_diverted(rootfs, "/usr/bin/dash", binary)


def _run(argv: list[str], cwd: Path) -> None:
    run = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if run.returncode != 0:
        tail = (run.stderr or run.stdout).strip().splitlines()[-5:]
        raise ShellBuildError(f"{argv[0]} failed: " + " | ".join(tail))
