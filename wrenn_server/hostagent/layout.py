"""Where the host agent keeps things on disk: the one module that knows the data directory's layout.

    <data>/images/minimal/<version>/        the base image (`current` links the newest): `rootfs/`, `vm/`
    <data>/images/teams/<team>/<template>/  a snapshot template: `snapshot.json`, `upper/` or `disk.qcow2`,
                                            `checkpoint/`; `deleted` once it is to go
    <template>/prepared/<size>-<stamp>/     a prepared checkpoint of a template, laid out like a snapshot template
    <data>/sandboxes/<name>/                a capsule's (or a warm guest's) working directory
    <data>/disks/<id>/                      where a capsule's own disk (gVisor: `<name>/disk.ext4`) is mounted;
                                            `<id>.ext4` beside it: a spare disk, made ahead, not yet a capsule's
    <data>/runsc/                           runsc's own state
    <data>/host-credentials.json            what the agent got at registration

A checkpoint directory holds `checkpoint.img` (written last: the checkpoint is complete once it is there) and,
from the microVM runtime, `memory` and `vm.json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SNAPSHOT_FILE = "snapshot.json"
DELETED_FILE = "deleted"


@dataclass(frozen=True)
class DataDir:
    """The agent's data directory."""

    root: Path

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def minimal(self) -> Path:
        """The base image's versions, and `current`."""
        return self.images / "minimal"

    @property
    def minimal_current(self) -> Path:
        return self.minimal / "current"

    def team_template(self, team_id: str, template_id: str) -> Path:
        return self.images / "teams" / team_id / template_id

    def team_templates(self, marker: str) -> list[Path]:
        """The team templates that hold the file `marker` (`SNAPSHOT_FILE`, `DELETED_FILE`)."""
        return [path.parent for path in self.images.glob(f"teams/*/*/{marker}")]

    @property
    def sandboxes(self) -> Path:
        return self.root / "sandboxes"

    def capsule(self, name: str) -> CapsuleDir:
        """The working directory of the guest the runtime knows as `name` (a record's `name`)."""
        return CapsuleDir(self.sandboxes / name)

    @property
    def disks(self) -> Path:
        """Mount points of the capsules' own disks, and spare disks made ahead."""
        return self.root / "disks"

    @property
    def runsc_state(self) -> Path:
        return self.root / "runsc"

    @property
    def credentials(self) -> Path:
        """What the agent got at registration."""
        return self.root / "host-credentials.json"

    @property
    def agent_status(self) -> Path:
        """What the running agent says of itself for `wrenn doctor` (its runtime, its warm pool): root's alone."""
        return self.root / "agent-status.json"


def staging(target: Path, tag: str) -> Path:
    """Where a template directory is written before it is renamed to `target`."""
    return target.with_name(f".staging-{tag}")


def is_staging(path: Path) -> bool:
    """Whether `path` is where a template directory is written before it is renamed into place."""
    return path.name.startswith(".staging-")


def replaced(target: Path, tag: str) -> Path:
    """Where an overwritten template goes while capsules made from it still use it."""
    return target.with_name(f".replaced-{tag}")


@dataclass(frozen=True)
class CheckpointDir:
    """A guest's whole state on disk."""

    path: Path

    @property
    def image(self) -> Path:
        return self.path / "checkpoint.img"

    @property
    def partial_image(self) -> Path:
        return self.path / "checkpoint.img.part"

    @property
    def memory(self) -> Path:
        return self.path / "memory"

    @property
    def machine(self) -> Path:
        return self.path / "vm.json"

    def complete(self) -> bool:
        return self.image.is_file()


@dataclass(frozen=True)
class VmDir:
    """An image's microVM outputs (`<image>/vm/`)."""

    path: Path

    @property
    def kernel(self) -> Path:
        return self.path / "vmlinux"

    @property
    def initrd(self) -> Path:
        return self.path / "initrd.img"

    @property
    def disk(self) -> Path:
        return self.path / "rootfs.ext4"

    @property
    def kernel_version(self) -> Path:
        return self.path / "kernel-version"


@dataclass(frozen=True)
class CapsuleDir:
    """A capsule's working directory: its record, its files over its template, its guest's runtime files."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def record(self) -> Path:
        return self.path / "state.json"

    @property
    def disk_image(self) -> Path:
        """gVisor: the capsule's own disk, an ext4 file of its `disk_size_mb`, which holds `upper` and `work`."""
        return self.path / "disk.ext4"

    @property
    def disk_link(self) -> Path:
        """gVisor: a link to where `disk_image` is mounted (`<data>/disks/<id>/`)."""
        return self.path / "fs"

    @property
    def _files(self) -> Path:
        """Where the overlay's directories are: on the capsule's own disk if it has one (older capsules, and
        hosts without loop devices, keep them as plain directories here)."""
        return self.disk_link if self.disk_link.is_symlink() else self.path

    @property
    def upper(self) -> Path:
        """The capsule's own files over its template (gVisor: an overlay's upper layer)."""
        return self._files / "upper"

    @property
    def overlay_work(self) -> Path:
        """The overlay's work directory: on the same filesystem as `upper`, as overlayfs requires."""
        return self._files / "work"

    @property
    def rootfs(self) -> Path:
        """Where the overlay is mounted."""
        return self.path / "rootfs"

    @property
    def bundle(self) -> Path:
        """gVisor's OCI bundle (`config.json`)."""
        return self.path / "bundle"

    @property
    def disk(self) -> Path:
        """The microVM's qcow2 overlay on its template's disk."""
        return self.path / "disk.qcow2"

    @property
    def console(self) -> Path:
        return self.path / "console.log"

    @property
    def checkpoint(self) -> CheckpointDir:
        return CheckpointDir(self.path / "checkpoint")

    @property
    def memory(self) -> Path:
        """The microVM guest's RAM."""
        return self.path / "mem"

    @property
    def machine(self) -> Path:
        return self.path / "vm.json"

    @property
    def qemu_pid(self) -> Path:
        return self.path / "qemu.pid"

    @property
    def qmp_socket(self) -> Path:
        return self.path / "qmp.sock"


@dataclass(frozen=True)
class TemplateDir:
    """A template: a base image version, a snapshot template or a prepared checkpoint."""

    path: Path

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"

    @property
    def upper(self) -> Path:
        return self.path / "upper"

    @property
    def disk(self) -> Path:
        return self.path / "disk.qcow2"

    @property
    def snapshot_file(self) -> Path:
        return self.path / SNAPSHOT_FILE

    @property
    def manifest(self) -> Path:
        """A base image's build manifest."""
        return self.path / "manifest.json"

    @property
    def vm(self) -> VmDir:
        """A base image's own microVM outputs."""
        return VmDir(self.path / "vm")

    @property
    def deleted_marker(self) -> Path:
        return self.path / DELETED_FILE

    @property
    def checkpoint_dir(self) -> CheckpointDir:
        return CheckpointDir(self.path / "checkpoint")

    def exists(self) -> bool:
        return self.rootfs.is_dir() or self.snapshot_file.is_file()

    def prepared(self, size: str) -> Path:
        """The prepared checkpoint of this template at `size` (which names the runtime's stamp too)."""
        return self.path / "prepared" / size

    def about(self) -> dict[str, object] | None:
        """A snapshot template's `snapshot.json`; None for a base template."""
        if not self.snapshot_file.is_file():
            return None
        about: dict[str, object] = json.loads(self.snapshot_file.read_text())
        return about

    def write_about(self, about: dict[str, object]) -> None:
        self.snapshot_file.write_text(json.dumps(about))

    def layers(self) -> list[Path]:
        """The read-only filesystem layers, top first: a base template is its `rootfs`; a snapshot template is
        the capsule's own changes (`upper`) over the layers of the template it came from."""
        about = self.about()
        if about is None:
            return [self.rootfs]
        return [self.upper, *TemplateDir(Path(str(about["base"]))).layers()]

    def runtime(self) -> str | None:
        """The runtime whose guest state a snapshot template holds (None: a base template, any runtime boots
        it)."""
        about = self.about()
        return None if about is None else str(about.get("runtime", "gvisor"))  # older snapshots: gVisor only

    def image(self) -> VmDir:
        """The microVM outputs (kernel, initramfs, root disk) of the image at the bottom of the chain."""
        return VmDir(self.layers()[-1].parent / "vm")

    def checkpoint(self) -> CheckpointDir | None:
        """Where a snapshot template's guest state (memory, processes) is, if it has one."""
        checkpoint = self.checkpoint_dir
        return checkpoint if checkpoint.complete() else None
