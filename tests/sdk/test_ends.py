"""Every end keeps its files and says why, through the SDK against `wrenn up`: a snapshot cut short by a crash is
settled when `wrenn up` starts again (the capsule back with its files, no half-made template left), and a capsule
whose guest died ends in `error` with its reason, keeps its files, and resumes from them."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tests.guests import kill_guest
from tests.stack import Stack

from .test_pause import _quietly

if TYPE_CHECKING:
    from wrenn import Capsule


def _staging_dirs(stack: Stack) -> set[Path]:
    return set((stack.data_dir / "images" / "teams").glob("*/.staging-*"))


def _settled(box: Capsule) -> str:
    """The capsule's status once it is no longer changing state (a minute after a restart at the most)."""
    from wrenn.models import Status

    deadline = time.monotonic() + 60
    while (status := box.get_info().status) not in (Status.running, Status.paused, Status.error):
        assert time.monotonic() < deadline, f"still {status} a minute after the restart"
        time.sleep(0.2)
    return str(status.value)


def test_killing_wrenn_up_mid_snapshot_leaves_the_capsule_running_with_its_files(stack: Stack) -> None:
    """SIGKILL as the snapshot begins (the guest frozen, or being checkpointed), then once the guest's checkpoint
    is written (the guest gone, its files being copied): after each restart the capsule runs with its files."""
    from wrenn import Capsule
    from wrenn.models import Status

    def begun(made: set[Path]) -> bool:
        return bool(made)

    def checkpointed(made: set[Path]) -> bool:
        return any((path / "checkpoint" / "checkpoint.img").is_file() for path in made)

    with Capsule(memory_mb=256) as box:
        box.commands.run("head -c 268435456 /dev/urandom > /root/big && md5sum /root/big > /root/big.md5 && sync")
        digest = box.commands.run("cat /root/big.md5").stdout
        for moment in (begun, checkpointed):
            before = _staging_dirs(stack)
            worker = threading.Thread(target=_quietly, args=(lambda: box.create_snapshot("cut-short"),))
            worker.start()
            deadline = time.monotonic() + 120
            while not moment(made := _staging_dirs(stack) - before):  # the agent is writing the template
                assert time.monotonic() < deadline and worker.is_alive(), f"the snapshot never reached {moment}"
                time.sleep(0.005)
            assert box.get_info().status == Status.snapshotting
            stack.stop(signal.SIGKILL)
            worker.join(60)
            stack.start()
            assert _settled(box) == "running", moment.__name__
            assert box.commands.run("md5sum -c /root/big.md5").exit_code == 0, moment.__name__
            assert box.commands.run("cat /root/big.md5").stdout == digest
            assert not made & _staging_dirs(stack), "the half-made template is left"
        # Not stuck: every transition works again.
        box.pause()
        box.resume()
        assert box.create_snapshot("cut-short-again").name == "cut-short-again"
        assert box.commands.run("md5sum -c /root/big.md5").exit_code == 0


def test_a_capsule_whose_guest_died_says_why_keeps_its_files_and_resumes(stack: Stack) -> None:
    from wrenn import Capsule
    from wrenn.exceptions import WrennError
    from wrenn.models import Status

    with Capsule(memory_mb=256) as box:
        box.files.write("/root/notes.txt", "kept")
        box.commands.run("sync")  # a VM killed outright keeps what its kernel had written out, as a real one does
        kill_guest(stack.data_dir, box.capsule_id)
        deadline = time.monotonic() + 60
        while box.get_info().status != Status.error:  # the agent sees it within seconds, the reconciler next
            assert time.monotonic() < deadline, "the capsule whose guest died is not `error`"
            time.sleep(0.2)
        info = box.get_info()
        assert "stopped on its own" in (info.metadata or {}).get("end_reason", "")
        try:
            box.commands.run("true")
        except WrennError as refused:
            assert refused.status_code == 409 and "stopped on its own" in str(refused)
        else:
            raise AssertionError("a command ran in a capsule whose guest died")
        time.sleep(5)  # two reconciler passes (WRENN_RECONCILE_INTERVAL_SEC=2): its disk must outlive them
        box.resume()
        assert box.get_info().status == Status.running
        assert box.files.read("/root/notes.txt") == "kept"
        assert "end_reason" not in (box.get_info().metadata or {})
