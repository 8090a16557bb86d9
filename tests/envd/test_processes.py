"""/process/*: run, stream, background, connect/replay, input, signals, tags and PTYs."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx

from .conftest import b64, collect, output, read_events, run, sh, unb64


def tag() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


async def start(client: httpx.AsyncClient, cmd: str, *args: str, **fields: Any) -> dict[str, Any]:
    body = {"cmd": cmd, "args": list(args), "mode": "background", **fields}
    response = await client.post("/process/start", json=body)
    assert response.status_code == 200, response.text
    started: dict[str, Any] = response.json()
    return started


async def connect(client: httpx.AsyncClient, **target: Any) -> list[dict[str, Any]]:
    async with client.stream("POST", "/process/connect", json=target) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        return await collect(response)


async def listed(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    processes: list[dict[str, Any]] = (await client.get("/process/list")).json()["processes"]
    return processes


async def test_run_exit_code_stdout_stderr(client: httpx.AsyncClient) -> None:
    result = await sh(client, "echo out; echo err >&2; exit 7")
    assert result["exit_code"] == 7
    assert (unb64(result["stdout"]), unb64(result["stderr"])) == (b"out\n", b"err\n")
    assert result["pid"] > 0 and result["duration_ms"] >= 0


async def test_run_env_is_user_init_and_request_only(client: httpx.AsyncClient) -> None:
    result = await run(client, "env", envs={"A": "1"}, cwd="/tmp")
    env = dict(line.split("=", 1) for line in unb64(result["stdout"]).decode().splitlines())
    assert env == {
        "PATH": env["PATH"],
        "HOME": "/root",
        "USER": "root",
        "LOGNAME": "root",
        "SHELL": env["SHELL"],
        "A": "1",
    }
    assert unb64((await run(client, "pwd", cwd="/tmp"))["stdout"]) == b"/tmp\n"


async def test_run_missing_cwd_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/process/start", json={"cmd": "true", "cwd": "/no/such/dir", "mode": "run"})
    assert (response.status_code, response.json()["code"]) == (404, "not_found")


async def test_children_get_oom_score_100_and_envd_keeps_its_own(client: httpx.AsyncClient) -> None:
    # The child's parent is envd's process helper; envd is the helper's parent.
    envd_pid = "$(cut -d' ' -f4 /proc/$PPID/stat)"
    result = await sh(client, f"cat /proc/{envd_pid}/oom_score_adj /proc/$$/oom_score_adj /proc/self/oom_score_adj")
    envd, child, grandchild = unb64(result["stdout"]).split()
    assert (child, grandchild) == (b"100", b"100")
    # -1000 when envd may protect itself (root with CAP_SYS_RESOURCE); else what it inherited from us.
    assert int(envd) in (-1000, int(Path("/proc/self/oom_score_adj").read_text()))


async def test_signalled_exit_code(client: httpx.AsyncClient) -> None:
    assert (await sh(client, "kill -TERM $$"))["exit_code"] == 143


async def test_binary_output(client: httpx.AsyncClient) -> None:
    script = "import sys; sys.stdout.buffer.write(bytes(range(256)) * 1000)"
    result = await run(client, sys.executable, "-c", script)
    assert unb64(result["stdout"]) == bytes(range(256)) * 1000


async def test_run_timeout_kills_the_process_group(client: httpx.AsyncClient, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    body = {
        "cmd": "sh",
        "args": ["-c", f"sleep 30 & echo $$ $! > {pids}; wait"],
        "mode": "run",
        "timeout_sec": 0.5,
    }
    response = await client.post("/process/start", json=body)
    assert response.status_code == 504
    assert response.json() == {"code": "timeout", "message": "command timed out after 0.5 s"}
    for pid in pids.read_text().split():
        assert killed(int(pid))


def killed(pid: int) -> bool:
    """Gone, a zombie, or with SIGKILL pending (on a busy host it may not have run since it was sent)."""
    try:
        status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    except FileNotFoundError:
        return True
    pending = int(status["SigPnd"], 16) | int(status["ShdPnd"], 16)
    return "zombie" in status["State"] or bool(pending & (1 << (signal.SIGKILL - 1)))


async def test_missing_or_unexecutable_command(client: httpx.AsyncClient, tmp_path: Path) -> None:
    for mode in ("run", "stream", "background"):
        response = await client.post("/process/start", json={"cmd": "no-such-cmd", "mode": mode})
        assert response.status_code == 404
        assert response.json() == {"code": "not_found", "message": "executable not found: no-such-cmd"}
    response = await client.post("/process/start", json={"cmd": "/no/such-cmd", "mode": "run"})
    assert response.json() == {"code": "not_found", "message": "executable not found: /no/such-cmd"}
    script = tmp_path / "script.sh"
    script.write_text("echo hi\n")
    response = await client.post("/process/start", json={"cmd": str(script), "mode": "run"})
    assert (response.status_code, response.json()["code"]) == (400, "invalid_request")


async def test_stream_events_in_order(client: httpx.AsyncClient) -> None:
    body = {
        "cmd": "sh",
        "args": ["-c", "echo one; sleep 0.1; echo two >&2; sleep 0.1; echo three; exit 2"],
        "mode": "stream",
        "tag": tag(),
    }
    async with client.stream("POST", "/process/start", json=body) as response:
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked"
        events = await collect(response)
    assert events[0] == {"type": "start", "pid": events[0]["pid"], "tag": body["tag"]}
    assert [(e["type"], unb64(e["data"])) for e in events[1:-1]] == [
        ("stdout", b"one\n"),
        ("stderr", b"two\n"),
        ("stdout", b"three\n"),
    ]
    assert events[-1] == {"type": "end", "exit_code": 2, "signal": None}


async def test_background_list_and_connect_replay(client: httpx.AsyncClient) -> None:
    name = tag()
    started = await start(client, "sh", "-c", "echo early; sleep 0.6; echo late", tag=name, envs={"K": "v"})
    assert started["tag"] == name
    await asyncio.sleep(0.2)
    [entry] = [p for p in await listed(client) if p["pid"] == started["pid"]]
    assert entry == {
        "pid": started["pid"],
        "tag": name,
        "cmd": "sh",
        "args": ["-c", "echo early; sleep 0.6; echo late"],
        "envs": {"K": "v"},
        "cwd": "/root",
        "pty": False,
        "running": True,
    }
    events = await connect(client, tag=name)
    assert events[0]["type"] == "start" and events[0]["pid"] == started["pid"]
    assert output(events) == b"early\nlate\n"
    assert events[-1] == {"type": "end", "exit_code": 0, "signal": None}
    # A late connect still replays and ends at once; the process is no longer listed.
    assert output(await connect(client, pid=started["pid"])) == b"early\nlate\n"
    assert all(p["pid"] != started["pid"] for p in await listed(client))


async def test_replay_keeps_the_last_mebibyte(client: httpx.AsyncClient) -> None:
    script = "import sys; sys.stdout.write('x' * 3_000_000 + 'END'); sys.stdout.flush()"
    started = await start(client, sys.executable, "-c", script)
    events = await connect(client, pid=started["pid"])
    replay = output(events)
    await asyncio.sleep(0.1)
    again = output(await connect(client, pid=started["pid"]))
    assert len(again) == 1 << 20 and again.endswith(b"xEND")
    assert replay.endswith(b"xEND")


async def test_process_survives_its_stream_client(client: httpx.AsyncClient) -> None:
    body = {"cmd": "sh", "args": ["-c", "sleep 0.5; echo done"], "mode": "stream"}
    async with httpx.AsyncClient(base_url=client.base_url) as other:
        async with other.stream("POST", "/process/start", json=body) as response:
            pid = (await anext(read_events(response)))["pid"]
    assert any(p["pid"] == pid for p in await listed(client))
    events = await connect(client, pid=pid)
    assert output(events) == b"done\n" and events[-1]["exit_code"] == 0


async def test_kill_by_pid_and_by_tag(client: httpx.AsyncClient) -> None:
    by_pid = await start(client, "sleep", "30")
    name = tag()
    await start(client, "sleep", "30", tag=name)
    assert (await client.post("/process/signal", json={"pid": by_pid["pid"], "signal": "SIGKILL"})).status_code == 204
    assert (await client.post("/process/signal", json={"tag": name, "signal": 15})).status_code == 204
    assert (await connect(client, pid=by_pid["pid"]))[-1] == {"type": "end", "exit_code": 137, "signal": 9}
    assert (await connect(client, tag=name))[-1] == {"type": "end", "exit_code": 143, "signal": 15}
    bad = await client.post("/process/signal", json={"tag": name, "signal": "SIGNOPE"})
    assert (bad.status_code, bad.json()["code"]) == (400, "invalid_request")


async def test_duplicate_tag_is_409_while_running(client: httpx.AsyncClient) -> None:
    name = tag()
    first = await start(client, "sleep", "30", tag=name)
    response = await client.post("/process/start", json={"cmd": "true", "mode": "run", "tag": name})
    assert (response.status_code, response.json()["code"]) == (409, "conflict")
    await client.post("/process/signal", json={"pid": first["pid"], "signal": "SIGKILL"})
    await connect(client, tag=name)
    assert (await run(client, "true", tag=name))["exit_code"] == 0  # free again once the first has ended


async def test_unknown_pid_or_tag_is_404(client: httpx.AsyncClient) -> None:
    for path, body in [
        ("/process/connect", {"tag": "never-used"}),
        ("/process/connect", {"pid": 2**22 + 17}),
        ("/process/signal", {"tag": "never-used", "signal": "SIGTERM"}),
        ("/process/input", {"tag": "never-used", "data": ""}),
        ("/process/close-stdin", {"pid": 2**22 + 17}),
        ("/process/resize", {"tag": "never-used", "cols": 10, "rows": 10}),
    ]:
        response = await client.post(path, json=body)
        assert (response.status_code, response.json()["code"]) == (404, "not_found"), path


async def test_stdin_input_and_close(client: httpx.AsyncClient) -> None:
    body = {"cmd": "cat", "mode": "stream", "stdin": True}
    async with client.stream("POST", "/process/start", json=body) as response:
        events = read_events(response)
        pid = (await anext(events))["pid"]
        sent = await client.post("/process/input", json={"pid": pid, "data": b64(b"hello\n")})
        assert sent.status_code == 204
        assert await anext(events) == {"type": "stdout", "data": b64(b"hello\n")}
        big = os.urandom(300_000)  # more than a pipe holds: the write must wait for cat
        assert (await client.post("/process/input", json={"pid": pid, "data": b64(big)})).status_code == 204
        assert (await client.post("/process/close-stdin", json={"pid": pid})).status_code == 204
        rest = [e async for e in events]
    assert output(rest) == big
    assert rest[-1] == {"type": "end", "exit_code": 0, "signal": None}


async def test_input_without_stdin_is_409(client: httpx.AsyncClient) -> None:
    started = await start(client, "sleep", "30")
    response = await client.post("/process/input", json={"pid": started["pid"], "data": b64(b"x")})
    assert (response.status_code, response.json()["code"]) == (409, "conflict")
    response = await client.post("/process/resize", json={"pid": started["pid"], "cols": 10, "rows": 10})
    assert (response.status_code, response.json()["code"]) == (400, "invalid_request")
    await client.post("/process/signal", json={"pid": started["pid"], "signal": "SIGKILL"})


async def test_pty_resize_echo_and_term(client: httpx.AsyncClient) -> None:
    body = {"cmd": "sh", "mode": "stream", "pty": {"cols": 80, "rows": 24}}
    async with client.stream("POST", "/process/start", json=body) as response:
        events = read_events(response)
        pid = (await anext(events))["pid"]

        async def say(text: str) -> None:
            sent = await client.post("/process/input", json={"pid": pid, "data": b64(text.encode())})
            assert sent.status_code == 204

        async def read_until(marker: bytes) -> bytes:
            seen = b""
            while marker not in seen:
                event = await asyncio.wait_for(anext(events), 5)
                assert event["type"] in ("pty", "keepalive"), event
                seen += unb64(event.get("data", ""))
            return seen

        await say("stty size; echo $TERM; tty\n")
        seen = await read_until(b"/dev/pts/")
        assert b"24 80" in seen and b"xterm-256color" in seen
        resized = await client.post("/process/resize", json={"pid": pid, "cols": 100, "rows": 30})
        assert resized.status_code == 204
        await say("stty size\n")
        assert b"stty size" in await read_until(b"30 100")  # the terminal echoes what we type
        bad = await client.post("/process/resize", json={"pid": pid, "cols": 0, "rows": 30})
        assert bad.status_code == 400
        await say("exit 5\n")
        rest = [e async for e in events]
    assert rest[-1] == {"type": "end", "exit_code": 5, "signal": None}


async def test_two_clients_see_the_same_live_output(client: httpx.AsyncClient) -> None:
    started = await start(client, "sh", "-c", "sleep 0.3; echo shared")
    both = await asyncio.gather(connect(client, pid=started["pid"]), connect(client, pid=started["pid"]))
    assert [output(events) for events in both] == [b"shared\n", b"shared\n"]


async def test_slow_stream_client_is_dropped_not_the_process(client: httpx.AsyncClient) -> None:
    port = client.base_url.port
    assert port is not None
    body = b'{"cmd": "head", "args": ["-c", "67108864", "/dev/zero"], "mode": "stream", "tag": "flood"}'
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST /process/start HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    writer.write(head + body)
    await writer.drain()
    await asyncio.sleep(0.3)  # read nothing meanwhile: the output piles up for this client
    ended = await connect(client, tag="flood")
    assert ended[-1] == {"type": "end", "exit_code": 0, "signal": None}
    received = 0
    try:
        while chunk := await asyncio.wait_for(reader.read(1 << 20), 5):
            received += len(chunk)
    except ConnectionResetError:
        pass
    writer.close()
    assert received < 64 * 1024 * 1024  # far less than the whole output: the connection was dropped


async def test_children_inherit_only_their_stdio(client: httpx.AsyncClient) -> None:
    """envd's own sockets, pipes and terminals never leak into a user's process."""
    await start(client, "sleep", "30", tag=tag())  # another child's pipes exist meanwhile
    result = await run(client, "python3", "-c", "import os; print(sorted(os.listdir('/proc/self/fd')))")
    assert unb64(result["stdout"]).decode().strip() in ("['0', '1', '2']", "['0', '1', '2', '3']")


async def test_nul_in_args_or_env_is_400(client: httpx.AsyncClient) -> None:
    for fields in ({"args": ["a\u0000b"]}, {"envs": {"A": "x\u0000y"}}, {"envs": {"A=B": "x"}}):
        response = await client.post("/process/start", json={"cmd": "true", "mode": "run", **fields})
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "invalid_request"


async def test_processes_outlive_a_dead_process_helper(fresh_client: httpx.AsyncClient) -> None:
    """envd starts children through wrenn-spawn; when that helper dies, no exit is lost and starts go on."""
    client = fresh_client
    sleeper = await start(client, "sh", "-c", "sleep 1; exit 5", tag=tag())
    helper = int(unb64((await sh(client, "echo $PPID"))["stdout"]))
    assert helper != os.getpid()
    os.kill(helper, 9)
    # The sleeper, orphaned by the helper, is reaped by envd as its subreaper: its real exit code is reported.
    events = await connect(client, pid=sleeper["pid"])
    assert events[-1]["type"] == "end" and events[-1]["exit_code"] == 5
    after = await sh(client, "echo $PPID; echo again")
    assert after["exit_code"] == 0
    new_helper, text = unb64(after["stdout"]).decode().split()
    assert int(new_helper) != helper and text == "again"


async def test_sigkill_answers_once_the_process_is_gone(client: httpx.AsyncClient) -> None:
    for _ in range(5):
        started = await start(client, "sleep", "300", tag=tag())
        response = await client.post("/process/signal", json={"pid": started["pid"], "signal": "SIGKILL"})
        assert response.status_code == 204
        assert started["pid"] not in [p["pid"] for p in await listed(client)]
