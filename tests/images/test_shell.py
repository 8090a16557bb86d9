"""The image's /bin/sh is Debian's dash built statically (images/shell.py): it behaves as Debian's does."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SHARED_IMAGES
from wrenn_server.images.shell import ShellBuildError, build_static_dash

ROOTFS = SHARED_IMAGES / "minimal" / "current" / "rootfs"
STATIC, DEBIAN = ROOTFS / "usr/bin/dash", ROOTFS / "usr/bin/dash.real"
PT_INTERP = 3

# Each runs under both shells, directly on this host (bookworm, as the guest): the outputs must be equal.
SCRIPTS = [
    r"echo -e 'a\tb'",  # Debian's patch: echo takes -e
    r"printf '%s-%d\n' x 5; echo $((7 * 6))",
    'set -- a \'b c\'; for x in "$@"; do echo "[$x]"; done; echo $#',
    "f() { return 3; }; f; echo $?; x=abcdef; echo ${#x} ${x%def} ${x#abc}",
    "trap 'echo bye' EXIT; echo hi",
    "ulimit -r",  # Debian's patch: ulimit accepts -r
    "cd /tmp && pwd",
    "read a b <<EOF\n1 2\nEOF\necho $b$a",
    "case foo in f*) echo glob;; esac; echo /bin/s[h]",
    "echo ~root ~nobody ~nosuchuser",  # users' homes, looked up in /etc/passwd
    "exec 3>&1; echo to-three >&3",
    "kill -l 15; type cd true; command -v ls",
    "set -e; false; echo unreachable",
    "echo $((1/0))",
    "unknown-command-xyz",
]


def _has_interpreter(path: Path) -> bool:
    data = path.read_bytes()
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return any(struct.unpack_from("<I", data, phoff + i * phentsize)[0] == PT_INTERP for i in range(phnum))


def _run(shell: Path, script: str) -> tuple[int, str, str]:
    run = subprocess.run([str(shell), "-c", script], capture_output=True, text=True, cwd="/", timeout=30)
    return run.returncode, run.stdout, run.stderr.replace(str(shell), "sh")


def test_sh_is_a_static_build_kept_in_place_by_a_diversion() -> None:
    manifest = json.loads((ROOTFS.parent / "manifest.json").read_text())
    assert "shell_error" not in manifest, manifest.get("shell_error")
    assert (ROOTFS / "usr/bin/sh").resolve() == STATIC.resolve()
    assert not _has_interpreter(STATIC), "/usr/bin/dash is dynamically linked"
    assert _has_interpreter(DEBIAN), "Debian's own dash is kept beside it"
    listed = subprocess.run(
        ["chroot", str(ROOTFS), "dpkg-divert", "--list", "/usr/bin/dash"], capture_output=True, text=True, check=True
    ).stdout
    assert "local diversion of /usr/bin/dash to /usr/bin/dash.real" in listed


@pytest.mark.parametrize("script", SCRIPTS)
def test_it_behaves_as_debians_dash(script: str) -> None:
    assert _run(STATIC, script) == _run(DEBIAN, script)


def test_like_debians_it_forks_the_last_command_of_sh_c() -> None:
    # Debian's patch: `sh -c` does not exec its last command, so that command's parent is the shell.
    script = "echo $$; cut -d' ' -f4 /proc/self/stat"
    for shell in (STATIC, DEBIAN):
        shell_pid, parent = _run(shell, script)[1].split()
        assert shell_pid == parent, shell


def test_a_host_without_the_build_tools_gets_a_clear_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ShellBuildError, match="missing on this host: apt-get"):
        build_static_dash("0.5.12-2", "http://deb.debian.org/debian", "bookworm", tmp_path / "cache")
