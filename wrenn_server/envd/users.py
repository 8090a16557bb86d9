"""Users and the defaults `/init` sets: who a process runs as, with which environment, in which directory."""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass, field

from .errors import NotFound

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: str
    shell: str

    @classmethod
    def lookup(cls, name: str) -> User:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise NotFound(f"unknown user: {name}") from None
        shell = entry.pw_shell or "/bin/sh"
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir or "/", shell)

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
