"""Streams through the official SDK: exec streams, attaching to background processes, and the terminal.

One capsule serves the module. Terminal tests end their shell themselves: a shell outlives its socket.
"""

from __future__ import annotations

import time

import pytest
from wrenn import Capsule, CommandHandle, PtySession, StreamEvent

pytestmark = pytest.mark.sdk

OLD_PROCESS_AGE_SEC = 62.0


@pytest.fixture(scope="module")
def old_process(capsule: Capsule) -> tuple[CommandHandle, float]:
    """A background process started with the module; the last test attaches once it is over a minute old."""
    handle = capsule.commands.run("echo begun; sleep 600", background=True)
    return handle, time.monotonic()


def joined(events: list[StreamEvent], kind: str) -> str:
    return "".join(str(getattr(e, "data", "")) for e in events if e.type == kind)


def read_until(term: PtySession, needle: bytes | tuple[bytes, ...], timeout: float = 30.0) -> bytes:
    """Terminal output until `needle` (or one of them) shows; the server's 30 s pings bound every wait."""
    needles = needle if isinstance(needle, tuple) else (needle,)
    seen = b""
    others: list[str] = []  # errors the server reported (a failed resize, undelivered input) explain a failure
    deadline = time.monotonic() + timeout
    for event in term:
        if event.type == "output" and isinstance(event.data, bytes):
            seen += event.data
            if any(n in seen for n in needles):
                return seen
        elif event.type != "ping":
            others.append(repr(event))
        if event.type == "exit" or time.monotonic() > deadline:
            break
    raise AssertionError(f"{needle!r} never showed; the output ended with {seen[-400:]!r}; other events: {others}")


def exit_code(term: PtySession, timeout: float = 30.0) -> int | None:
    deadline = time.monotonic() + timeout
    for event in term:
        if event.type == "exit":
            return event.exit_code
        if time.monotonic() > deadline:
            break
    return None


def test_old_process_is_running(capsule: Capsule, old_process: tuple[CommandHandle, float]) -> None:
    handle, _ = old_process
    assert handle.pid in [p.pid for p in capsule.commands.list()]


def test_stream_events_and_exit_code(capsule: Capsule) -> None:
    events = list(capsule.commands.stream("echo a; echo b >&2; exit 3"))
    assert events[0].type == "start" and getattr(events[0], "pid", 0) > 0
    assert joined(events, "stdout") == "a\n"
    assert joined(events, "stderr") == "b\n"
    assert events[-1].type == "exit" and getattr(events[-1], "exit_code", None) == 3


def test_stream_output_is_utf8_with_replacement(capsule: Capsule) -> None:
    events = list(capsule.commands.stream("printf 'caf\\303\\251 \\377!'; head -c 200000 /dev/zero | tr '\\0' x"))
    out = joined(events, "stdout")
    assert out.startswith("café \ufffd!") and out.count("x") == 200_000
    assert getattr(events[-1], "exit_code", None) == 0


def test_stream_of_missing_program_is_an_error(capsule: Capsule) -> None:
    events = list(capsule.commands.stream("no-such-program", args=["x"]))
    assert [e.type for e in events] == ["error"]
    assert "no-such-program" in joined(events, "error")


def test_connect_replays_then_follows(capsule: Capsule) -> None:
    script = "echo early; touch /tmp/early-printed; sleep 2; echo late >&2; exit 5"
    handle = capsule.commands.run(script, background=True)
    deadline = time.monotonic() + 10
    while capsule.commands.run("test -e /tmp/early-printed").exit_code != 0:
        assert time.monotonic() < deadline, "the background process never printed"
        time.sleep(0.1)
    events = list(capsule.commands.connect(handle.pid))
    assert events[0].type == "start" and getattr(events[0], "pid", 0) == handle.pid
    assert joined(events, "stdout") == "early\n"  # printed before anyone attached: replayed
    assert joined(events, "stderr") == "late\n"
    assert getattr(events[-1], "exit_code", None) == 5


def test_connect_to_unknown_process_is_an_error(capsule: Capsule) -> None:
    events = list(capsule.commands.connect(999_999))
    assert [e.type for e in events] == ["error"]


def test_pty_round_trip(capsule: Capsule) -> None:
    with capsule.pty() as term:
        term.write(b"echo hi-$((40+2)) $TERM\n")
        assert b"hi-42 xterm-256color" in read_until(term, b"hi-42 xterm-256color")
        assert term.tag is not None and term.tag.startswith("pty-") and (term.pid or 0) > 0
        term.kill()
        assert exit_code(term) == 137


def test_pty_resize_reaches_the_program(capsule: Capsule) -> None:
    with capsule.pty(cols=100, rows=30) as term:
        term.write(b"stty size\n")
        read_until(term, b"30 100")
        term.resize(132, 43)
        # Seen once in a few hundred runs, unexplained: a `stty` typed right after the resize still saw the old
        # size (no error reported). The program must see the new size; asking again tells a late resize apart
        # from a lost one.
        for _ in range(3):
            term.write(b"stty size\n")
            if b"43 132" in read_until(term, (b"43 132", b"30 100")):
                break
        else:
            raise AssertionError("the program never saw the new size")
        term.write(b"exit 7\n")
        assert exit_code(term) == 7


def test_pty_reconnect_keeps_the_shell(capsule: Capsule) -> None:
    with capsule.pty() as term:
        term.write(b"cd /tmp; export X=1; echo ready-$((2*3))\n")
        read_until(term, b"ready-6")
        tag = term.tag
    assert tag is not None
    # The socket is closed; the shell lives on.
    with capsule.pty_connect(tag) as again:
        again.write(b'echo "$(pwd):X=$X:$((5*5))"\n')
        read_until(again, b"/tmp:X=1:25")
        assert again.tag == tag
        again.write(b"exit\n")
        assert exit_code(again) == 0


def test_pty_output_while_detached_is_replayed(capsule: Capsule) -> None:
    with capsule.pty() as term:
        # Wait for the prompt (its echoed definition does not contain it): nothing is left in flight then.
        # The SDK drops its socket without a closing handshake, and a frame sent just before that can be
        # lost in the TCP reset when the server happens to be writing at that moment.
        term.write(b"PS1='re''ady> '\n")
        read_until(term, b"ready> ")
        term.write(b"sleep 2; echo away-$((6*7))\n")
        tag = term.tag
    assert tag is not None
    time.sleep(3)  # printed while nobody is attached
    with capsule.pty_connect(tag) as again:
        read_until(again, b"away-42")
        again.write(b"exit 0\n")
        assert exit_code(again) == 0


def test_background_process_over_a_minute_old_is_connectable(
    capsule: Capsule, old_process: tuple[CommandHandle, float]
) -> None:
    handle, started_at = old_process
    time.sleep(max(0.0, started_at + OLD_PROCESS_AGE_SEC - time.monotonic()))
    assert handle.pid in [p.pid for p in capsule.commands.list()]
    events = capsule.commands.connect(handle.pid)
    assert next(events).type == "start"
    assert joined([next(events)], "stdout") == "begun\n"  # replayed
    capsule.commands.kill(handle.pid)  # followed live: its end arrives
    rest = list(events)
    assert [e.type for e in rest] == ["exit"] and getattr(rest[0], "exit_code", None) == 137
