"""Replacing a file that a Debian package owns, in a way package upgrades inside a capsule respect."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def replace_diverted(rootfs: Path, path: str, replacement: Path) -> None:
    """Puts `replacement` at `path` in the image; the package's own file moves to `path.real` under a local dpkg
    diversion, so reinstalling or upgrading the package inside a capsule keeps ours in place."""
    subprocess.run(
        ["chroot", str(rootfs), "dpkg-divert", "--quiet", "--local", "--rename"]
        + ["--divert", f"{path}.real", "--add", path],
        check=True,
    )
    shutil.copy2(replacement, rootfs / path.lstrip("/"))
