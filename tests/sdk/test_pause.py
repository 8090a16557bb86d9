"""Pause and resume through the SDK: the whole capsule (memory, processes, files, terminals, address) continues."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.guests import guest
from tests.stack import Stack

if TYPE_CHECKING:
    from wrenn import Capsule


@pytest.fixture(scope="module", autouse=True)
def idle(stack: Stack) -> Iterator[Capsule]:
    """A capsule with the shortest inactivity timeout (60 s), made first so its clock runs during the module;
    one per stack (without naming the stack, the second stack's tests got the first one's capsule)."""
    from wrenn import Capsule

    with Capsule(timeout=60) as box:
        box.files.write("/root/idle.txt", "still here")
        yield box


# The count is renamed into place: a pause between `>` truncating the file and echo writing it would
# otherwise leave it empty for the next read.
COUNTER = "i=0; while true; do i=$((i+1)); echo $i > /tmp/count.next; mv /tmp/count.next /tmp/count; sleep 0.1; done"


def count(box: Capsule) -> int:
    return int(box.commands.run("cat /tmp/count").stdout)


def test_a_counter_keeps_counting_and_files_stay(capsule: Capsule) -> None:
    from wrenn.models import Status

    capsule.files.write("/root/kept.txt", "on disk")
    capsule.commands.run("echo in-tmpfs > /tmp/kept")
    handle = capsule.commands.run(COUNTER, background=True, tag="counter")
    time.sleep(0.5)
    for cycle in range(5):
        before = count(capsule)
        assert capsule.pause().status == Status.paused
        assert capsule.get_info().status == Status.paused
        if cycle % 2:
            time.sleep(2)  # checkpointed to disk meanwhile (WRENN_CHECKPOINT_AFTER_SEC=1): resume restores it
        assert capsule.resume().status == Status.running
        after = count(capsule)
        assert after >= before, "the counter went back: its memory was not kept"
        time.sleep(0.4)
        assert count(capsule) > after, "the counter stopped counting after resume"
        assert capsule.files.read("/root/kept.txt") == "on disk"
        assert capsule.commands.run("cat /tmp/kept").stdout == "in-tmpfs\n"
        assert handle.pid in [p.pid for p in capsule.commands.list()]


def test_paused_capsule_refuses_work_and_transitions_are_idempotent(capsule: Capsule) -> None:
    from wrenn.exceptions import WrennConflictError
    from wrenn.models import Status

    capsule.pause()
    try:
        assert capsule.pause().status == Status.paused  # pausing a paused capsule: nothing to do
        with pytest.raises(WrennConflictError):
            capsule.commands.run("true")
        with pytest.raises(WrennConflictError):
            capsule.files.write("/tmp/x", "x")
    finally:
        capsule.resume()
    assert capsule.resume().status == Status.running  # resuming a running capsule: nothing to do
    assert capsule.commands.run("echo ok").stdout == "ok\n"


def test_a_terminal_is_reattached_after_resume(capsule: Capsule) -> None:
    with capsule.pty() as term:
        term.write(b"export MARK=$((6*7)); echo set-$MARK\n")
        seen = b""
        while b"set-42" not in seen:
            seen += next(term).data or b""
        tag = term.tag
    assert tag is not None
    capsule.pause()
    capsule.resume()
    with capsule.pty_connect(tag) as again:
        again.write(b"echo back-$MARK\n")
        seen = b""
        deadline = time.monotonic() + 30
        while b"back-42" not in seen and time.monotonic() < deadline:
            seen += next(again).data or b""
        assert b"back-42" in seen
        again.kill()


def test_open_connections_keep_the_capsule_in_memory(capsule: Capsule) -> None:
    """A capsule holding a network connection cannot be checkpointed here; it is frozen in memory instead."""
    from wrenn.models import Status

    capsule.commands.run("python3 -m http.server 8001 --bind 0.0.0.0", background=True)
    url = capsule.get_url(8001)
    with httpx.Client() as client:  # a kept-alive connection through the proxy into the capsule
        deadline = time.monotonic() + 30
        while client.get(url).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert capsule.pause().status == Status.paused
        assert capsule.resume().status == Status.running
        assert client.get(url).status_code == 200
    assert capsule.commands.run("echo fine").stdout == "fine\n"


def test_pause_of_a_destroyed_capsule_is_409() -> None:
    from wrenn import Capsule
    from wrenn.exceptions import WrennConflictError

    with Capsule() as box:
        box.destroy()
        with pytest.raises(WrennConflictError):
            box.pause()
        with pytest.raises(WrennConflictError):
            box.resume()


def test_a_paused_capsule_survives_a_restart_of_wrenn_up(stack: Stack) -> None:
    from wrenn import Capsule
    from wrenn.models import Status

    with Capsule() as box:
        box.commands.run("echo before > /root/mark")
        handle = box.commands.run("sleep 600", background=True)
        box.pause()
        time.sleep(2)  # checkpointed to disk: the restart finds its checkpoint
        stack.stop()
        stack.start()
        with Capsule.connect(box.capsule_id) as again:  # connect resumes a paused capsule
            assert again.get_info().status == Status.running
            assert again.commands.run("cat /root/mark").stdout == "before\n"
            assert handle.pid in [p.pid for p in again.commands.list()]


def _quietly(call: Callable[[], object]) -> None:
    """A call whose server is killed under it: whatever it raises is expected."""
    with contextlib.suppress(Exception):
        call()


def test_killing_wrenn_up_during_a_pause_or_resume_loses_nothing(stack: Stack) -> None:
    """SIGKILL at different moments of pauses and resumes (from a frozen guest and from a checkpoint): after
    the restart the capsule is running or paused, never lost nor half-way, and continues with its memory."""
    from wrenn import Capsule
    from wrenn.models import Status

    def settled(box: Capsule) -> Status:
        deadline = time.monotonic() + 60
        while (status := box.get_info().status) not in (Status.running, Status.paused):
            assert time.monotonic() < deadline, f"still {status} a minute after the restart"
            time.sleep(0.2)
        return status

    with Capsule() as box:
        box.commands.run("echo mem > /tmp/mem; echo disk > /root/disk")
        rounds = [("pause", 0.0), ("resume", 0.0), ("pause", 0.03), ("resume", 0.03), ("pause", 0.06)]
        for i, (action, delay) in enumerate(rounds):
            if action == "resume":
                box.pause()
                time.sleep(2.0 if i % 4 == 3 else 0)  # every other resume restores a checkpoint
            worker = threading.Thread(target=_quietly, args=(getattr(box, action),))
            worker.start()
            time.sleep(delay)
            stack.stop(signal.SIGKILL)
            worker.join(60)
            stack.start()
            if settled(box) == Status.paused:
                box.resume()
            assert box.commands.run("cat /tmp/mem /root/disk").stdout == "mem\ndisk\n", f"round {i}: {action}"


def test_an_idle_capsule_is_paused_and_connect_resumes_it(idle: Capsule) -> None:
    from wrenn import Capsule
    from wrenn.models import Status

    deadline = time.monotonic() + 150
    while idle.get_info().status != Status.paused:
        assert time.monotonic() < deadline, "not paused 150 s after its last activity (timeout 60 s)"
        time.sleep(2)
    with Capsule.connect(idle.capsule_id) as again:
        assert again.get_info().status == Status.running
        assert again.files.read("/root/idle.txt") == "still here"


def test_a_lost_checkpoint_ends_in_error_not_a_hang(stack: Stack) -> None:
    from wrenn import Capsule
    from wrenn.exceptions import WrennError
    from wrenn.models import Status

    with Capsule() as box:
        box.pause()
        image = guest(stack.data_dir, box.capsule_id)[1] / "checkpoint" / "checkpoint.img"
        deadline = time.monotonic() + 30
        while not image.is_file():  # checkpointed a second after the pause (WRENN_CHECKPOINT_AFTER_SEC=1)
            assert time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(0.5)
        image.unlink()
        with pytest.raises(WrennError) as failed:
            box.resume()
        assert "checkpoint" in str(failed.value)
        assert box.get_info().status == Status.error
