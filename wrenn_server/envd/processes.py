"""Processes envd started: their output ring and live listeners, input, signals, reaping and expiry."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from ..proto.envd import EndReason, OutputKind, PtySize
from .containment import UserCgroup, Victim
from .errors import Conflict, InvalidRequest, NotFound
from .spawn import Launch, Spawned, Spawner, set_winsize

RING_BYTES = 1 << 20
KEEP_AFTER_EXIT = 60.0
# After the process exits, how long a grandchild may keep its output pipe open before we stop reading.
EOF_GRACE = 0.5
READ_SIZE = 64 * 1024


class Listener(Protocol):
    def on_output(self, kind: OutputKind, data: bytes) -> None: ...

    def on_end(self, exit_code: int, signal: int | None, reason: EndReason | None) -> None: ...


@dataclass(frozen=True)
class ProcessInfo:
    """What a client asked for, reported back by `/process/list`."""

    tag: str | None
    cmd: str
    args: list[str]
    envs: dict[str, str]
    cwd: str
    pty: bool


class Process:
    def __init__(self, info: ProcessInfo, spawned: Spawned) -> None:
        self.info = info
        self.pid = spawned.pid
        self.exit_code: int | None = None
        self.signal: int | None = None
        self.reason: EndReason | None = None  # set when envd itself ended it (or a process of its session)
        self.finished = asyncio.Event()
        self._outputs = spawned.outputs
        self._input_fd = spawned.input_fd
        self._master_fd = spawned.master_fd
        self._ring: deque[tuple[OutputKind, bytes]] = deque()
        self._ring_size = 0
        self._listeners: set[Listener] = set()
        self._write_lock = asyncio.Lock()
        self._loop = asyncio.get_running_loop()
        for fd in self._outputs:
            self._loop.add_reader(fd, self._read, fd)

    @property
    def running(self) -> bool:
        return self.exit_code is None

    def subscribe(self, listener: Listener) -> None:
        """Replays the kept output to `listener`, then feeds it live output and the end."""
        for kind, data in self._ring:
            listener.on_output(kind, data)
        if self.finished.is_set():
            listener.on_end(self.exit_code or 0, self.signal, self.reason)
        else:
            self._listeners.add(listener)

    def unsubscribe(self, listener: Listener) -> None:
        self._listeners.discard(listener)

    def _read(self, fd: int) -> bool:
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return False
        except OSError:  # EIO: every slave side of the pty is closed
            data = b""
        if not data:
            self._close_output(fd)
            return False
        kind = self._outputs[fd]
        self._ring.append((kind, data))
        self._ring_size += len(data)
        excess = self._ring_size - RING_BYTES
        while excess > 0:
            old_kind, old = self._ring[0]
            if len(old) <= excess:
                self._ring.popleft()
            else:
                self._ring[0] = (old_kind, old[excess:])
            cut = min(len(old), excess)
            self._ring_size -= cut
            excess -= cut
        for listener in list(self._listeners):
            listener.on_output(kind, data)
        return True

    def _close_output(self, fd: int) -> None:
        self._loop.remove_reader(fd)
        del self._outputs[fd]
        if fd == self._input_fd:
            self._input_fd = None
        os.close(fd)
        self._maybe_finish()

    def exited(self, status: int) -> None:
        """Called by the reaper with the wait status."""
        code = os.waitstatus_to_exitcode(status)
        self.exit_code, self.signal = (128 - code, -code) if code < 0 else (code, None)
        if self._outputs:
            self._loop.call_later(EOF_GRACE, self._stop_reading)
        self._maybe_finish()

    def _stop_reading(self) -> None:
        for fd in list(self._outputs):
            while self._read(fd):
                pass
            if fd in self._outputs:
                self._close_output(fd)

    def _maybe_finish(self) -> None:
        if self.exit_code is None or self._outputs or self.finished.is_set():
            return
        if self._input_fd is not None:
            os.close(self._input_fd)
            self._input_fd = None
        self.finished.set()
        for listener in self._listeners:
            listener.on_end(self.exit_code, self.signal, self.reason)
        self._listeners.clear()

    async def write(self, data: bytes) -> None:
        async with self._write_lock:
            view = memoryview(data)
            while view:
                fd = self._input_fd
                if fd is None:
                    raise Conflict(f"stdin of process {self.pid} is closed or was never opened")
                try:
                    view = view[os.write(fd, view) :]
                except BlockingIOError:
                    ready = self._loop.create_future()
                    self._loop.add_writer(fd, ready.set_result, None)
                    try:
                        await ready
                    finally:
                        self._loop.remove_writer(fd)
                except BrokenPipeError:
                    raise Conflict(f"process {self.pid} no longer reads its stdin") from None

    async def close_stdin(self) -> None:
        if self._master_fd is not None:
            await self.write(b"\x04")  # a terminal has no end of input, only the EOF character
        elif self._input_fd is not None:
            async with self._write_lock:
                os.close(self._input_fd)
                self._input_fd = None

    def send_signal(self, sig: int) -> None:
        """Signals the process's group, which outlives it while its background children do (a fork bomb's
        first shell is gone at once). Its pid cannot be another group's while a member of this one lives."""
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def resize(self, size: PtySize) -> None:
        if self._master_fd is None or self._master_fd not in self._outputs:
            raise InvalidRequest(f"process {self.pid} has no terminal")
        set_winsize(self._master_fd, size)


class ProcessTable:
    def __init__(self, spawner_path: str, child_oom_score: int | None, cgroup: UserCgroup | None = None) -> None:
        self._spawner = Spawner(spawner_path, self._exited, child_oom_score, cgroup.add if cgroup else None)
        self._cgroup = cgroup
        self._kernel_oom_kills = cgroup.oom_kills() if cgroup else 0
        self._by_pid: dict[int, Process] = {}
        self._by_tag: dict[str, Process] = {}

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGCHLD, self._reap)

    def close(self) -> None:
        self._spawner.close()

    def start(self, launch: Launch, info: ProcessInfo) -> Process:
        if info.tag is not None and (old := self._by_tag.get(info.tag)) is not None and old.running:
            raise Conflict(f"tag already in use by process {old.pid}: {info.tag}")
        proc = Process(info, self._spawner.spawn(launch))
        # Nothing awaits between spawn and here, so the reaper cannot see this pid before it is known.
        self._by_pid[proc.pid] = proc
        if info.tag is not None:
            self._by_tag[info.tag] = proc
        return proc

    def find(self, pid: int | None, tag: str | None) -> Process:
        if pid is None and tag is None:
            raise InvalidRequest("'pid' or 'tag' is required")
        proc = self._by_pid.get(pid) if pid is not None else self._by_tag.get(tag or "")
        if proc is None:
            raise NotFound(f"no such process: {pid if pid is not None else tag}")
        return proc

    def running(self) -> list[Process]:
        return [p for p in self._by_pid.values() if p.running]

    def spared(self) -> set[int]:
        """What the memory watcher must never end: envd and its process helper."""
        helper = self._spawner.helper_pid()
        return {os.getpid()} | ({helper} if helper is not None else set())

    def _killed_by_the_kernel(self, status: int) -> bool:
        """A SIGKILL (or a shell's 137 for a child so killed) while the kernel's OOM count in the user cgroup rose:
        the kernel's OOM killer (a microVM's) ended this process or one of its children."""
        if self._cgroup is None or os.waitstatus_to_exitcode(status) not in (-9, 137):
            return False
        seen, self._kernel_oom_kills = self._kernel_oom_kills, self._cgroup.oom_kills()
        return self._kernel_oom_kills > seen

    def session_killed(self, session: int) -> None:
        """The watcher ended a whole session for holding the capsule at its task limit."""
        proc = self._by_pid.get(session)
        if proc is not None and proc.reason is None:
            proc.reason = EndReason.PIDS

    def oom_killed(self, victim: Victim) -> None:
        """The memory watcher ended `victim`: the process it belongs to (each runs in its own session, so the
        session leader) ends with the reason `oom`."""
        for pid in (victim.pid, victim.session):
            proc = self._by_pid.get(pid)
            if proc is not None and proc.running:
                proc.reason = EndReason.OOM
                return

    def _reap(self) -> None:
        # envd's own children are the helper and, as their subreaper, orphans: a dead helper's children
        # among them. The helper reports the exits of the children it reaps itself (see `_exited`).
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self._spawner.helper_pid():
                self._spawner.lost()
            else:
                self._exited(pid, status)

    def _exited(self, pid: int, status: int) -> None:
        proc = self._by_pid.get(pid)
        if proc is not None and proc.running:
            if proc.reason is None and self._killed_by_the_kernel(status):
                proc.reason = EndReason.OOM
            proc.exited(status)
            asyncio.get_running_loop().call_later(KEEP_AFTER_EXIT, self._forget, proc)

    def _forget(self, proc: Process) -> None:
        if self._by_pid.get(proc.pid) is proc:
            del self._by_pid[proc.pid]
        if proc.info.tag is not None and self._by_tag.get(proc.info.tag) is proc:
            del self._by_tag[proc.info.tag]
