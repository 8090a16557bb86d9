"""Leave the machine as a test found it, even when a test or the product failed half-way."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SLOTS = Path("/run/wrenn/slots")


def purge_data_dir(root: Path) -> None:
    """Kill every capsule of a data directory, unmount its disks, free its network slots, delete it."""
    for runsc_root in [root / "runsc", *root.glob("*/runsc")]:
        listed = subprocess.run(["runsc", "--root", str(runsc_root), "list", "-quiet"], capture_output=True, text=True)
        for sandbox_id in listed.stdout.split():
            subprocess.run(["runsc", "--root", str(runsc_root), "delete", "--force", sandbox_id], capture_output=True)
    # Sandboxes whose runsc state is already gone: their processes still name the data directory.
    subprocess.run(["pkill", "-KILL", "-f", f"runsc-(sandbox|gofer) --root={root}/"], check=False)
    subprocess.run(["pkill", "-KILL", "-f", f"qemu-system.*mem-path={root}/"], check=False)  # microVMs
    for line in Path("/proc/mounts").read_text().splitlines():
        target = line.split()[1]
        if target.startswith(str(root) + "/"):
            subprocess.run(["umount", "-l", target], check=False)
    owner = str(root.resolve())
    for slot in SLOTS.glob("*") if SLOTS.exists() else []:
        try:
            if slot.read_text() != owner and not slot.read_text().startswith(owner + "/"):
                continue
        except OSError:
            continue
        for ns in (f"wrenn-cns-{slot.name}", f"wrenn-ns-{slot.name}"):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        slot.unlink(missing_ok=True)
    shutil.rmtree(root, ignore_errors=True)
