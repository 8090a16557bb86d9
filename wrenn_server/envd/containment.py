"""Containment inside the guest: the processes envd starts live in one cgroup with a task limit, and a memory
watcher ends the largest of them (SIGKILL) before the capsule runs out of memory.

Why here and not only on the host: gVisor's sentry is one host process, so the host cgroup's OOM killer can only
end the whole capsule (gVisor issues #2533, #2535), and the host's pids limit counts the sentry's threads, not the
guest's tasks. Inside the guest the sentry's own cgroupfs enforces `pids.max` (a fork fails with EAGAIN), and
envd sees the guest's memory in /proc/meminfo. A microVM's kernel does both itself; the same code runs there as a
second line (see docs/containment.md).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import signal
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass

log = logging.getLogger(__name__)

CGROUP_ROOT = "/sys/fs/cgroup"
USER_CGROUP = "wrenn-user"
# The watcher ends a process when the guest's available memory falls under this share of its size (or 8 MiB).
MARGIN_SHARE, MARGIN_MIN = 1 / 32, 8 << 20
# Between samples: as long as memory at the fastest fill rate seen here (gVisor, ptrace) could not cross the
# margin, but never shorter than MIN nor longer than MAX. An idle 256 MiB capsule samples ~10 times a second.
FILL_RATE = 2 << 30
POLL_MIN, POLL_MAX = 0.01, 1.0
# After a kill, how long to wait for the victim's memory to come back before judging again.
SETTLE_SEC = 0.05
# How long the processes may sit at the task limit before the session holding the most tasks is ended. Forks
# fail with EAGAIN meanwhile; ended, because under gVisor (ptrace) the sentry's host threads keep growing while
# a fork bomb churns at the limit (~450 a second, measured) until the sandbox dies (Go's 10,000-thread cap).
PIDS_GRACE_SEC = 2.0
# "At the limit": a bomb churns, its tasks exiting and forking, so the count hovers just under the limit.
PIDS_NEAR = 0.9
PIDS_POLL = 0.1
PIDS_SAMPLE = 32


@dataclass(frozen=True)
class UserCgroup:
    """The cgroup (v1 `memory,pids` or v2) every process envd starts is moved into."""

    path: str
    v2: bool
    pids_max: int

    def tasks(self) -> int:
        with open(os.path.join(self.path, "pids.current"), "rb") as f:
            return int(f.read())

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer ended in this cgroup (cgroup2 `memory.events`; v1 `oom_kill`
        in `memory.oom_control`). gVisor keeps no such count: there envd's own watcher is the OOM killer."""
        name = "memory.events" if self.v2 else "memory.oom_control"
        try:
            with open(os.path.join(self.path, name), "rb") as f:
                for line in f:
                    key, _, value = line.partition(b" ")
                    if key == b"oom_kill":
                        return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def procs(self) -> list[int]:
        with open(os.path.join(self.path, "cgroup.procs"), "rb") as f:
            return [int(v) for v in f.read().split()]

    def add(self, pid: int) -> None:
        with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
            f.write(str(pid))

    def apply_pids_max(self) -> None:
        with open(os.path.join(self.path, "pids.max"), "w") as f:
            f.write(str(self.pids_max))

    def set_memory_limit(self, size: int) -> None:
        """What programs that size themselves read (memory.max, memory.limit_in_bytes). On gVisor it is only
        shown, not enforced; on a kernel it makes the kernel's OOM killer act inside this cgroup, sparing envd."""
        name = "memory.max" if self.v2 else "memory.limit_in_bytes"
        with open(os.path.join(self.path, name), "w") as f:
            f.write(str(size))


def _mounted(root: str) -> str | None:
    """The type of the filesystem mounted at `root`, if one is (the last mount there wins)."""
    found = None
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 2 and fields[1] == root:
                found = fields[2]
    return found


def _mount(source: str, target: str, fstype: str, options: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(source.encode(), target.encode(), fstype.encode(), 0, options.encode() or None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype} on {target}: {os.strerror(err)}")


def _filesystems() -> set[str]:
    with open("/proc/filesystems") as f:
        return {line.split()[-1] for line in f if line.strip()}


def setup_user_cgroup(pids_max: int, memory_limit: int | None, root: str = CGROUP_ROOT) -> UserCgroup:
    """Mounts the guest's cgroup filesystem (if nothing is mounted there yet) and makes the user cgroup. A kernel
    offering cgroup2 gets cgroup2; gVisor (runsc 20221219) offers v1, whose `memory,pids` hierarchy it enforces."""
    fstype = _mounted(root)
    if fstype not in (None, "cgroup", "cgroup2"):  # a v1 layout (tmpfs of hierarchies): not ours to change
        raise OSError(errno.EEXIST, f"{root} holds a {fstype}, not a cgroup filesystem")
    if fstype is None:
        fstype = "cgroup2" if "cgroup2" in _filesystems() else "cgroup"
        _mount("cgroup", root, fstype, "" if fstype == "cgroup2" else "memory,pids")
    v2 = fstype == "cgroup2"
    if v2:
        with suppress(OSError), open(os.path.join(root, "cgroup.subtree_control"), "w") as f:
            f.write("+pids +memory")
    cgroup = UserCgroup(os.path.join(root, USER_CGROUP), v2, pids_max)
    with suppress(FileExistsError):
        os.mkdir(cgroup.path)
    cgroup.apply_pids_max()
    if memory_limit is not None:
        with suppress(OSError):
            cgroup.set_memory_limit(memory_limit)
    return cgroup


@dataclass(frozen=True)
class Memory:
    total: int
    available: int


def read_memory(fd: int) -> Memory:
    """One pread of /proc/meminfo (a trap under gVisor, so one system call per sample, not three)."""
    data = os.pread(fd, 4096, 0)
    total = available = free = -1
    for line in data.split(b"\n"):
        if line.startswith(b"MemTotal:"):
            total = int(line.split()[1]) * 1024
        elif line.startswith(b"MemAvailable:"):
            available = int(line.split()[1]) * 1024
        elif line.startswith(b"MemFree:"):
            free = int(line.split()[1]) * 1024
    return Memory(total, available if available >= 0 else free)


@dataclass(frozen=True)
class Victim:
    pid: int
    session: int
    rss: int


def largest_process(spared: set[int]) -> Victim | None:
    """The process holding the most resident memory, leaving out `spared`, pid 1 and any process shielded with
    oom_score_adj -1000 (as the kernel's OOM killer does)."""
    best: Victim | None = None
    page = os.sysconf("SC_PAGE_SIZE")
    for name in os.listdir("/proc"):
        if not name.isdigit() or (pid := int(name)) in spared or pid == 1:
            continue
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                rss = int(f.read().split()[1]) * page
            if best is not None and rss <= best.rss:
                continue
            with open(f"/proc/{pid}/oom_score_adj", "rb") as f:
                if int(f.read()) == -1000:
                    continue
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            session = int(stat[stat.rfind(b")") + 2 :].split()[3])
        except (OSError, ValueError, IndexError):
            continue
        best = Victim(pid, session, rss)
    return best


def busiest_group(pids: list[int], spared: set[int]) -> tuple[int, int] | None:
    """(process group, session) most of `pids` belong to: a fork bomb's shells share one group. A sample of at
    most PIDS_SAMPLE processes is enough to find it, and reading each costs a trap under gVisor."""
    counts: dict[tuple[int, int], int] = {}
    own = os.getsid(0)  # envd's own session (its helper's too)
    step = max(1, len(pids) // PIDS_SAMPLE)
    for pid in pids[::step]:
        if pid in spared or pid == 1:
            continue
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            fields = stat[stat.rfind(b")") + 2 :].split()
            group, session = int(fields[2]), int(fields[3])
        except (OSError, ValueError, IndexError):
            continue
        if session != own and group not in spared:
            counts[(group, session)] = counts.get((group, session), 0) + 1
    return max(counts, key=lambda key: counts[key]) if counts else None


class MemoryWatcher:
    """earlyoom's pattern, in envd: sample the guest's memory, and when what is available falls under the
    margin, SIGKILL the largest process. `on_kill(victim)` tells the process table, so that the command it
    belongs to ends with the reason `oom`."""

    def __init__(
        self,
        spared: Callable[[], set[int]],
        on_kill: Callable[[Victim], None],
        on_session_kill: Callable[[int], None],
        cgroup: UserCgroup | None,
    ) -> None:
        self._spared = spared
        self._on_kill = on_kill
        self._on_session_kill = on_session_kill
        self._cgroup = cgroup
        self._fd = os.open("/proc/meminfo", os.O_RDONLY | os.O_CLOEXEC)
        self._at_limit_since: float | None = None
        self._next_tasks_check = 0.0  # the task count is read once a second, and often near the limit
        self.kills = 0

    def close(self) -> None:
        os.close(self._fd)

    def check(self) -> float:
        """One sample (and a kill, if due); answers how long to wait before the next."""
        memory = read_memory(self._fd)
        if memory.total <= 0:
            return POLL_MAX
        margin = max(int(memory.total * MARGIN_SHARE), MARGIN_MIN)
        if memory.available < margin:
            victim = largest_process(self._spared())
            # Nothing worth ending (memory held by files in /tmp, say): killing would free nothing.
            if victim is not None and victim.rss >= MARGIN_MIN:
                self._kill(victim, memory)
                return SETTLE_SEC
        delay = min(max((memory.available - margin) / FILL_RATE, POLL_MIN), POLL_MAX)
        return min(delay, self._check_tasks())

    def _check_tasks(self) -> float:
        """Ends the busiest session once the tasks have stayed near the limit for PIDS_GRACE_SEC."""
        if self._cgroup is None:
            return POLL_MAX
        now = time.monotonic()
        if self._at_limit_since is None and now < self._next_tasks_check:
            return self._next_tasks_check - now
        current, limit = self._cgroup.tasks(), self._cgroup.pids_max
        self._next_tasks_check = now + (PIDS_POLL if current >= limit // 2 else POLL_MAX)
        if current < limit * PIDS_NEAR:
            self._at_limit_since = None
            return self._next_tasks_check - now
        if self._at_limit_since is None:
            self._at_limit_since = now
        if now - self._at_limit_since < PIDS_GRACE_SEC:
            return PIDS_POLL
        found = busiest_group(self._cgroup.procs(), self._spared())
        if found is not None:
            group, session = found
            log.warning(
                "near the task limit (%d of %d) for %.1f s: killing process group %d",
                current,
                limit,
                now - self._at_limit_since,
                group,
            )
            self._on_session_kill(session)
            with suppress(OSError):
                os.killpg(group, signal.SIGKILL)
        return PIDS_POLL

    def _kill(self, victim: Victim, memory: Memory) -> None:
        try:
            os.kill(victim.pid, signal.SIGKILL)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise
            return
        self.kills += 1
        log.warning(
            "out of memory (%d of %d MiB available): killed process %d holding %d MiB",
            memory.available >> 20,
            memory.total >> 20,
            victim.pid,
            victim.rss >> 20,
        )
        self._on_kill(victim)

    async def run(self) -> None:
        while True:
            try:
                delay = self.check()
            except OSError as exc:  # /proc unreadable for a moment: keep watching
                log.warning("memory watcher: %s", exc)
                delay = POLL_MAX
            await asyncio.sleep(delay)
