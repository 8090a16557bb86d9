"""Users and the defaults `/init` sets: who a process runs as, with which environment, in which directory."""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass, field

from .errors import NotFound

_users: dict[str, tuple[tuple[int, int], User]] = {}
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: str
    shell: str
    groups: tuple[int, ...]

    @classmethod
    def lookup(cls, name: str) -> User:
        # Every process start looks its user up; reading the account files costs a dozen system calls,
        # a stat of /etc/passwd one (each is a trap into gVisor).
        try:
            version = os.stat("/etc/passwd").st_mtime_ns, os.stat("/etc/group").st_mtime_ns
        except OSError:
            version = (0, 0)
        cached = _users.get(name)
        if cached is not None and cached[0] == version:
            return cached[1]
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise NotFound(f"unknown user: {name}") from None
        groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
        user = cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir or "/", entry.pw_shell or "/bin/sh", groups)
        _users[name] = (version, user)
        return user

    def base_env(self) -> dict[str, str]:
        return {"PATH": PATH, "HOME": self.home, "USER": self.name, "LOGNAME": self.name, "SHELL": self.shell}


@dataclass
class Defaults:
    user: str = "root"
    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None

    def owner(self) -> User | None:
        """Who new files belong to, or None when they stay envd's (root's)."""
        user = User.lookup(self.user)
        return None if user.uid == os.getuid() else user

    def resolve_path(self, path: str) -> str:
        if os.path.isabs(path):
            return os.path.normpath(path)
        base = self.workdir or User.lookup(self.user).home
        return os.path.normpath(os.path.join(base, path))
