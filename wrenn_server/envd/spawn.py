"""Starting one child through wrenn-spawn (spawner.c): pipes or a pseudo-terminal, its own session, its user,
its OOM score; and hearing when it exits."""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import logging
import os
import shutil
import socket
import struct
import subprocess
import termios
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from enum import IntEnum

from ..proto.envd import OutputKind, PtySize
from .errors import InvalidRequest, NotFound
from .users import User

log = logging.getLogger(__name__)

SPAWNER = "/usr/local/lib/wrenn/wrenn-spawn"
CHILD_OOM_SCORE = 100
_REQUEST = struct.Struct("=IIIIIII")  # struct request in spawner.c
_REPLY = struct.Struct("=iii")
_EXITED = struct.Struct("=ii")
_FLAG_TERMINAL, _FLAG_SWITCH_USER = 1, 2
PR_SET_CHILD_SUBREAPER = 36


class Step(IntEnum):
    NONE = 0
    CHDIR = 1
    EXEC = 2
    USER = 3
    FORK = 4
    OTHER = 5


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
    pid: int
    outputs: dict[int, OutputKind]  # our read ends, non-blocking
    input_fd: int | None  # pipe to stdin, or the pty master
    master_fd: int | None


def resolve_executable(cmd: str, path: str) -> str:
    if "/" in cmd:
        return cmd  # the exec itself reports a missing or non-executable file
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


def _encode(value: str, what: str) -> bytes:
    data = os.fsencode(value)
    if b"\0" in data:
        raise InvalidRequest(f"{what} must not contain NUL characters")
    return data + b"\0"


def _failure(launch: Launch, step: int, err: int) -> Exception:
    reason = os.strerror(err)
    if step == Step.EXEC:
        if err == errno.ENOENT:
            return NotFound(f"executable not found: {launch.argv[0]}")
        return InvalidRequest(f"not executable: {launch.argv[0]} ({reason})")
    if step == Step.CHDIR:
        if err in (errno.ENOENT, errno.ENOTDIR):
            return NotFound(f"working directory not found: {launch.cwd}")
        return InvalidRequest(f"cannot enter working directory {launch.cwd}: {reason}")
    if step == Step.USER:
        return InvalidRequest(f"cannot run as user {launch.user.name}: {reason}")
    return OSError(err, f"could not start {launch.argv[0]}: {reason}")


class Spawner:
    """envd's side of wrenn-spawn: it starts envd's children and reports their exits to `on_exit(pid, status)`.

    The helper is started on first use and again after it dies. envd is the children's subreaper, so the
    children of a helper that died come to envd, whose own reaper then reports their exits.
    """

    def __init__(
        self,
        path: str,
        on_exit: Callable[[int, int], None],
        child_oom_score: int | None,
        place: Callable[[int], None] | None = None,
    ) -> None:
        self.path = path
        self._on_exit = on_exit
        self._oom_score = child_oom_score
        self._place = place  # moves the helper (and so every child it starts) into the user cgroup
        self._helper: subprocess.Popen[bytes] | None = None
        self._requests: socket.socket | None = None
        self._events: socket.socket | None = None
        self._pending = b""
        self._null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        with suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    def _start_helper(self) -> None:
        requests, theirs = socket.socketpair()
        events, their_events = socket.socketpair()
        try:
            self._helper = subprocess.Popen(
                [self.path, str(theirs.fileno()), str(their_events.fileno())]
                + ([] if self._oom_score is None else [str(self._oom_score)]),
                pass_fds=(theirs.fileno(), their_events.fileno()),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        except OSError as exc:
            requests.close()
            events.close()
            raise OSError(exc.errno, f"cannot start the process helper {self.path}: {exc.strerror}") from None
        finally:
            theirs.close()
            their_events.close()
        if self._place is not None:
            try:  # before its first request, so before its first child
                self._place(self._helper.pid)
            except OSError as exc:
                log.warning("cannot move the process helper into the user cgroup: %s", exc)
        self._requests, self._events, self._pending = requests, events, b""
        events.setblocking(False)
        asyncio.get_running_loop().add_reader(events.fileno(), self._read_events)

    def helper_pid(self) -> int | None:
        return self._helper.pid if self._helper is not None else None

    def lost(self) -> None:
        """The helper is gone (envd reaped it, or its socket closed): the next start runs a new one."""
        events, self._events = self._events, None
        if events is not None:
            asyncio.get_running_loop().remove_reader(events.fileno())
            while True:  # the exits it reported before it went
                try:
                    data = events.recv(65536)
                except OSError:  # BlockingIOError included: nothing more
                    break
                if not data:
                    break
                self._records(data)
            events.close()
        if self._requests is not None:
            self._requests.close()
        if self._helper is not None:
            self._helper.returncode = self._helper.returncode or -1  # reaped by envd's reaper, never by Popen
        self._helper = self._requests = None
        self._pending = b""

    def _read_events(self) -> None:
        """One read per wake-up (the poll wakes us again for more): each system call is a trap under gVisor."""
        events = self._events
        if events is None:
            return
        try:
            data = events.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._records(data)
        else:
            log.warning("the process helper stopped; it starts again with the next process")
            self.lost()

    def _records(self, data: bytes) -> None:
        self._pending += data
        whole = len(self._pending) - len(self._pending) % _EXITED.size
        records, self._pending = self._pending[:whole], self._pending[whole:]
        for pid, status in _EXITED.iter_unpack(records):
            self._on_exit(pid, status)

    def spawn(self, launch: Launch) -> Spawned:
        switch = launch.user if launch.user.uid != os.getuid() else None
        body = b"".join(
            [
                struct.pack(f"={len(switch.groups)}I", *switch.groups) if switch else b"",
                _encode(launch.executable, "cmd"),
                _encode(launch.cwd, "cwd"),
                *(_encode(arg, "args") for arg in launch.argv),
                *(_encode(f"{_env_key(k)}={v}", "envs") for k, v in launch.env.items()),
            ]
        )
        flags = (_FLAG_TERMINAL if launch.pty else 0) | (_FLAG_SWITCH_USER if switch else 0)
        header = _REQUEST.pack(
            len(body),
            flags,
            switch.uid if switch else 0,
            switch.gid if switch else 0,
            len(switch.groups) if switch else 0,
            len(launch.argv),
            len(launch.env),
        )
        master: int | None = None
        if launch.pty:
            master, slave = os.openpty()
            os.set_blocking(master, False)
            set_winsize(master, launch.pty)
            ours, theirs, stdio = [master], [slave], (slave, slave, slave)
            outputs: dict[int, OutputKind] = {master: OutputKind.PTY}
            input_fd: int | None = master
        else:
            out_r, out_w = _pipe(ours_reads=True)
            err_r, err_w = _pipe(ours_reads=True)
            in_r, in_w = _pipe(ours_reads=False) if launch.stdin else (self._null, None)
            ours = [out_r, err_r] + ([in_w] if in_w is not None else [])
            theirs = [out_w, err_w] + ([in_r] if in_w is not None else [])
            stdio = (in_r, out_w, err_w)
            outputs, input_fd = {out_r: OutputKind.STDOUT, err_r: OutputKind.STDERR}, in_w
        try:
            pid, err, step = self._exchange(header, body, stdio)
            if err:
                raise _failure(launch, step, err)
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        return Spawned(pid, outputs, input_fd, master)

    def _exchange(self, header: bytes, body: bytes, stdio: tuple[int, int, int]) -> tuple[int, int, int]:
        """Sends one start request; answers the helper's reply: (pid, errno, step)."""
        if self._requests is None:
            self._start_helper()
        requests = self._requests
        assert requests is not None
        try:
            message = header + body
            sent = requests.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("3i", *stdio))])
            requests.sendall(message[sent:])
            reply = b""
            while len(reply) < _REPLY.size:
                chunk = requests.recv(_REPLY.size - len(reply))
                if not chunk:
                    raise ConnectionResetError("the process helper closed its socket")
                reply += chunk
        except OSError as exc:
            self.lost()
            raise OSError(errno.EAGAIN, f"the process helper stopped ({exc}); try again") from None
        pid, err, step = _REPLY.unpack(reply)
        return pid, err, step

    def close(self) -> None:
        if self._requests is not None:
            self._requests.close()  # the helper exits when it reads the end
            self._requests = None


def _pipe(ours_reads: bool) -> tuple[int, int]:
    """A pipe whose end we keep is non-blocking and whose end the child gets is blocking, in two system calls
    rather than three: under gVisor each is a trap."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    fcntl.fcntl(write_end if ours_reads else read_end, fcntl.F_SETFL, 0)
    return read_end, write_end


def _env_key(key: str) -> str:
    if not key or "=" in key:
        raise InvalidRequest(f"invalid environment variable name: {key!r}")
    return key
