"""Starting one child: pipes or a pseudo-terminal, its own session, its user, and its OOM score."""

from __future__ import annotations

import fcntl
import os
import shutil
import struct
import subprocess
import termios
from contextlib import suppress
from dataclasses import dataclass
from enum import StrEnum

from .errors import InvalidRequest, NotFound
from .users import User

CHILD_OOM_SCORE = 100


class OutputKind(StrEnum):
    STDOUT = "stdout"
    STDERR = "stderr"
    PTY = "pty"


@dataclass(frozen=True)
class PtySize:
    cols: int
    rows: int


@dataclass(frozen=True)
class Launch:
    """A fully resolved start request: nothing left to default."""

    argv: list[str]
    executable: str
    env: dict[str, str]
    cwd: str
    user: User
    stdin: bool
    pty: PtySize | None


@dataclass
class Spawned:
    popen: subprocess.Popen[bytes]
    outputs: dict[int, OutputKind]  # our read ends, non-blocking
    input_fd: int | None  # pipe to stdin, or the pty master
    master_fd: int | None


def resolve_executable(cmd: str, path: str) -> str:
    found = shutil.which(cmd, path=path)
    if found:
        return found
    if shutil.which(cmd, mode=os.F_OK, path=path):
        raise InvalidRequest(f"not executable: {cmd}")
    raise NotFound(f"executable not found: {cmd}")


def set_winsize(fd: int, size: PtySize) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size.rows, size.cols, 0, 0))


def oom_score() -> int | None:
    try:
        with open("/proc/self/oom_score_adj") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def set_oom_score(value: int) -> None:
    with suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
        f.write(str(value))


def _take_terminal() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # in the child: its pty becomes its controlling terminal


def spawn(launch: Launch, own_oom_score: int | None) -> Spawned:
    """Starts `launch`; `own_oom_score` is envd's, None when there is no /proc to set it in."""
    switch = launch.user if launch.user.uid != os.getuid() else None
    master: int | None = None
    if launch.pty:
        master, slave = os.openpty()
        set_winsize(master, launch.pty)
        ours, theirs, stdio = [master], [slave], (slave, slave, slave)
        outputs: dict[int, OutputKind] = {master: OutputKind.PTY}
        input_fd: int | None = master
    else:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        in_r, in_w = os.pipe() if launch.stdin else (subprocess.DEVNULL, None)
        ours = [out_r, err_r] + ([in_w] if in_w is not None else [])
        theirs = [out_w, err_w] + ([in_r] if in_w is not None else [])
        stdio = (in_r, out_w, err_w)
        outputs, input_fd = {out_r: OutputKind.STDOUT, err_r: OutputKind.STDERR}, in_w
    # The child inherits the OOM score at fork. Taking 100 ourselves for the moment of the fork, rather
    # than setting it in a preexec_fn, lets Popen use vfork (no preexec_fn, no uid change): ~0.2 ms, not
    # ~1.8. Going back down needs no privilege: the kernel lets a process return to its last privileged
    # floor, which is -1000 when envd could set that at start and its inherited score otherwise.
    if own_oom_score is not None:
        set_oom_score(CHILD_OOM_SCORE)
    try:
        popen = subprocess.Popen(
            launch.argv, executable=launch.executable, stdin=stdio[0], stdout=stdio[1], stderr=stdio[2],
            cwd=launch.cwd, env=launch.env, start_new_session=True,
            # Every descriptor Python opens is close-on-exec already; skipping the child's sweep of
            # /proc/self/fd saves ~0.6 ms per start under gVisor.
            close_fds=False,
            user=switch.uid if switch else None, group=switch.gid if switch else None,
            extra_groups=os.getgrouplist(switch.name, switch.gid) if switch else None,
            preexec_fn=_take_terminal if launch.pty else None,
        )
    except BaseException:
        for fd in ours:
            os.close(fd)
        raise
    finally:
        if own_oom_score is not None:
            set_oom_score(own_oom_score)
        for fd in theirs:
            os.close(fd)
    for fd in ours:
        os.set_blocking(fd, False)
    return Spawned(popen, outputs, input_fd, master)
