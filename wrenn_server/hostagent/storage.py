"""Templates and capsules on disk: which template a capsule uses, what can be removed, what a capsule wrote.

Image directories may be shared: a data directory's `images` (or its `images/minimal`) may be a symlink to
another's, as the tests and benches do with the machine's built image. Whoever removes unused templates there
must then know what every sharing data directory's capsules use: each one registers in `.users/` of the
image directories it uses, and a collection asks the records of all of them (docs/lifecycle.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from .errors import NotFound
from .layout import DELETED_FILE, SNAPSHOT_FILE, CapsuleDir, DataDir, TemplateDir
from .runtimes.loopdisk import LoopDisks

log = logging.getLogger(__name__)

USERS_DIR = ".users"  # in an image directory: one file per data directory that uses it, holding its path
PLATFORM_TEAM = "00000000-0000-0000-0000-000000000000"
MINIMAL_TEMPLATE = "00000000-0000-0000-0000-000000000000"


class Storage:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = DataDir(root)
        self.data.sandboxes.mkdir(parents=True, exist_ok=True)
        self.register()

    def _shared(self) -> list[Path]:
        """The image directories other data directories may share with this one (resolved)."""
        return [d.resolve() for d in (self.data.minimal, self.data.images / "teams") if d.is_dir()]

    def register(self) -> None:
        """Say in the image directories this data directory uses that its capsules use them."""
        me = str(self.root.resolve())
        for shared in self._shared():
            users = shared / USERS_DIR
            entry = users / hashlib.sha256(me.encode()).hexdigest()[:16]
            try:
                users.mkdir(exist_ok=True)
                if not entry.exists():
                    tmp = entry.with_suffix(f".{os.getpid()}")
                    tmp.write_text(me)
                    tmp.replace(entry)
            except OSError as exc:  # a read-only image directory: nobody collects there either
                log.warning("cannot register as a user of %s: %s", shared, exc)

    def used_elsewhere(self) -> set[str]:
        """Template directories that the capsules (and snapshot templates) of the other data directories
        sharing these images use. A registered data directory that is gone is forgotten."""
        me = str(self.root.resolve())
        used: set[str] = set()
        for shared in self._shared():
            users = shared / USERS_DIR
            for entry in users.glob("*") if users.is_dir() else []:
                if "." in entry.name:  # one being written
                    continue
                try:
                    root = Path(entry.read_text())
                except OSError:
                    continue
                if str(root) == me:
                    continue
                if not DataDir(root).sandboxes.is_dir():
                    entry.unlink(missing_ok=True)
                    continue
                used |= _uses_of(DataDir(root))
        return used

    def template_dir(self, team_id: str, template_id: str, name: str) -> Path:
        """The resolved (versioned) directory of a template, which a capsule keeps using for its lifetime."""
        if template_id in ("", MINIMAL_TEMPLATE):
            link = self.data.minimal_current
        else:
            link = self.data.team_template(team_id, template_id)
        if not TemplateDir(link).exists():
            raise NotFound(f"template {name!r} is not available on this host; build it with `wrenn image build`")
        return link.resolve()

    def default_template(self) -> Path | None:
        """The platform's minimal template, if this host has it."""
        try:
            return self.template_dir(PLATFORM_TEAM, MINIMAL_TEMPLATE, "minimal")
        except NotFound:
            return None

    def team_template(self, team_id: str, template_id: str) -> Path:
        return self.data.team_template(team_id, template_id)

    def collect_unused_templates(self, in_use: set[str]) -> None:
        """Remove superseded versions of the minimal image, and deleted snapshot templates, that no capsule
        (nor a snapshot template built on it) uses any more, here or in another data directory sharing them."""
        self.register()
        in_use = in_use | self.used_elsewhere()
        for marked in self.data.team_templates(DELETED_FILE):
            template = marked.resolve()
            if not _used(template, in_use):
                log.info("removing deleted template %s", template.name)
                shutil.rmtree(template, ignore_errors=True)
        in_use = in_use | {str(base) for base in self._snapshot_bases()}
        base = self.data.minimal
        current = self.data.minimal_current.resolve() if self.data.minimal_current.exists() else None
        for version in base.glob("*"):
            if version.is_symlink() or version.name.startswith(".") or not version.is_dir():
                continue
            version = version.resolve()
            if version == current or _used(version, in_use):
                continue
            log.info("removing unused image version %s", version.name)
            shutil.rmtree(version, ignore_errors=True)

    def _snapshot_bases(self) -> set[Path]:
        bases = set()
        for snapshot in self.data.team_templates(SNAPSHOT_FILE):
            try:
                bases.update(TemplateDir(snapshot).layers())
            except (OSError, ValueError, KeyError):
                continue
        return {b.parent for b in bases}

    @staticmethod
    def disk_used(capsule: CapsuleDir) -> int:
        """Bytes the capsule wrote on top of its template: its own disk's used blocks (gVisor), or its overlay
        upper layer (older gVisor capsules, hosts without loop devices), or its qcow2 overlay (microVM)."""
        own = LoopDisks.used_bytes(capsule)
        if own is not None:
            return own
        try:
            overlay = capsule.disk.stat().st_blocks * 512
        except OSError:
            overlay = 0
        return Storage.tree_size(capsule.upper) + overlay

    @staticmethod
    def tree_size(path: Path) -> int:
        """Bytes allocated on disk by the files under `path`."""
        total = 0
        for dirpath, _dirs, files in os.walk(path):
            for name in files:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
                except OSError:
                    pass
        return total


def _uses_of(data: DataDir) -> set[str]:
    """What a data directory's capsules run on (from their records) and its snapshot templates build on."""
    used: set[str] = set()
    for workdir in data.sandboxes.glob("*"):
        try:
            template_dir = json.loads(data.capsule(workdir.name).record.read_text())["template_dir"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if template_dir:
            used.add(str(template_dir))
    for snapshot in data.team_templates(SNAPSHOT_FILE):
        try:
            used.update(str(layer.parent) for layer in TemplateDir(snapshot).layers())
        except (OSError, ValueError, KeyError):
            continue
    return used


def _used(directory: Path, in_use: set[str]) -> bool:
    """Whether a capsule uses the directory or one inside it (a prepared checkpoint, inside a template)."""
    return any(path == str(directory) or path.startswith(f"{directory}/") for path in in_use)
