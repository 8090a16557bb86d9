"""Templates and capsules on disk: which template a capsule uses, what can be removed, what a capsule wrote."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from .errors import NotFound
from .layout import DELETED_FILE, SNAPSHOT_FILE, CapsuleDir, DataDir, TemplateDir

log = logging.getLogger(__name__)

PLATFORM_TEAM = "00000000-0000-0000-0000-000000000000"
MINIMAL_TEMPLATE = "00000000-0000-0000-0000-000000000000"


class Storage:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = DataDir(root)
        self.data.sandboxes.mkdir(parents=True, exist_ok=True)

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
        (nor a snapshot template built on it) uses any more."""
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
        """Bytes the capsule wrote on top of its template (its overlay upper layer, or its qcow2 overlay)."""
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


def _used(directory: Path, in_use: set[str]) -> bool:
    """Whether a capsule uses the directory or one inside it (a prepared checkpoint, inside a template)."""
    return any(path == str(directory) or path.startswith(f"{directory}/") for path in in_use)
