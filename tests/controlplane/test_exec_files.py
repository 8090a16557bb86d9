"""Exec, processes and files: the running guard, and real commands and files in a real capsule.

One capsule (per database backend) serves the whole module: every test leaves it as it found it, working
under its own paths and stopping the processes it starts.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from wrenn_server.proto._generated import hostagent_pb2 as pb

from .agent import METADATA, Agent
from .conftest import Running
from .harness import Harness, ServerThread
from .test_errors_auth import assert_error

GUARDED: list[tuple[str, str, dict[str, Any]]] = [
    ("post", "/exec", {"json": {"cmd": "true"}}),
    ("post", "/ping", {}),
    ("get", "/processes", {}),
    ("delete", "/processes/12", {}),
    ("post", "/files/read", {"json": {"path": "/etc/hostname"}}),
    ("post", "/files/stream/read", {"json": {"path": "/etc/hostname"}}),
    ("post", "/files/list", {"json": {"path": "/"}}),
    ("post", "/files/mkdir", {"json": {"path": "/tmp/x"}}),
    ("post", "/files/remove", {"json": {"path": "/tmp/x"}}),
    ("post", "/files/write", {"files": {"file": ("upload", b"x")}, "data": {"path": "/tmp/x"}}),
    ("post", "/files/stream/write", {"files": {"file": ("upload", b"x")}, "data": {"path": "/tmp/x"}}),
]


@pytest.mark.parametrize("status", ["paused", "stopped"])
async def test_not_running_is_409(http: httpx.AsyncClient, harness: Harness, status: str) -> None:
    team_id, api_key = await harness.team()
    capsule = await harness.capsule(team_id, status)
    for method, suffix, kwargs in GUARDED:
        resp = await http.request(
            method, f"/v1/capsules/{capsule}{suffix}", headers={"X-API-Key": api_key}, **kwargs
        )
        message = assert_error(resp, 409, "invalid_state")
        assert message == f"sandbox is not running (status: {status})", suffix


async def sh(http: httpx.AsyncClient, running: Running, script: str, **fields: Any) -> dict[str, Any]:
    """Run `sh -c script` in the capsule through the API; answers the 200 body."""
    capsule, headers = running
    body = {"cmd": "/bin/sh", "args": ["-c", script], **fields}
    resp = await http.post(f"/v1/capsules/{capsule}/exec", json=body, headers=headers)
    assert resp.status_code == 200, resp.text
    result: dict[str, Any] = resp.json()
    return result


async def test_exec_foreground(http: httpx.AsyncClient, running: Running) -> None:
    capsule, _ = running
    out = await sh(
        http,
        running,
        'echo "out:$A:$(pwd)"; echo "err:$B" >&2; exit 3',
        envs={"A": "1", "B": "two"},
        cwd="/tmp",
    )
    assert set(out) == {"sandbox_id", "cmd", "stdout", "stderr", "exit_code", "duration_ms", "encoding"}
    assert (out["sandbox_id"], out["cmd"], out["encoding"], out["exit_code"]) == (
        capsule,
        "/bin/sh",
        "utf-8",
        3,
    )
    assert (out["stdout"], out["stderr"]) == ("out:1:/tmp\n", "err:two\n")
    assert isinstance(out["duration_ms"], int) and out["duration_ms"] >= 0


async def test_exec_args_are_passed_verbatim(http: httpx.AsyncClient, running: Running) -> None:
    """No shell between the API and the program: spaces, quotes and `$` arrive as given."""
    capsule, headers = running
    body = {"cmd": "printf", "args": ["[%s]", "a b", "$HOME", "'q'", "ü"]}
    resp = await http.post(f"/v1/capsules/{capsule}/exec", json=body, headers=headers)
    assert resp.status_code == 200, resp.text
    assert resp.json()["stdout"] == "[a b][$HOME]['q'][ü]" and resp.json()["exit_code"] == 0


async def test_exec_signal_exit_and_missing_program(http: httpx.AsyncClient, running: Running) -> None:
    capsule, headers = running
    killed = await sh(http, running, "kill -9 $$")
    assert killed["exit_code"] != 0
    url = f"/v1/capsules/{capsule}/exec"
    missing = await http.post(url, json={"cmd": "/no/such/program"}, headers=headers)
    assert_error(missing, 404, "not_found")
    nowhere = await http.post(url, json={"cmd": "true", "cwd": "/no/such/dir"}, headers=headers)
    assert "/no/such/dir" in assert_error(nowhere, 404, "not_found")


async def test_exec_timeout(http: httpx.AsyncClient, running: Running) -> None:
    """A foreground command past its `timeout_sec` is killed and the answer is 504 `timeout`."""
    capsule, headers = running
    began = time.monotonic()
    body = {"cmd": "/bin/sh", "args": ["-c", "sleep 27; echo done"], "timeout_sec": 1}
    resp = await http.post(f"/v1/capsules/{capsule}/exec", json=body, headers=headers)
    assert assert_error(resp, 504, "timeout") == "command timed out after 1 s"
    assert time.monotonic() - began < 10
    procs = (await http.get(f"/v1/capsules/{capsule}/processes", headers=headers)).json()["processes"]
    assert not [p for p in procs if "sleep 27; echo done" in (p.get("args") or [])]
    assert (await sh(http, running, "ps -eo args | grep -c '^sleep 27' || true"))["stdout"] == "0\n"


async def test_exec_binary_output_is_base64(http: httpx.AsyncClient, running: Running) -> None:
    """Output that is not UTF-8 comes back base64-encoded, both streams, byte-exact."""
    out = await sh(http, running, "printf '\\377\\376A'; printf 'ok' >&2; exit 4")
    assert out["encoding"] == "base64" and out["exit_code"] == 4
    assert base64.b64decode(out["stdout"]) == b"\xff\xfeA" and base64.b64decode(out["stderr"]) == b"ok"
    text = await sh(http, running, "printf 'h\\303\\251'")
    assert (text["encoding"], text["stdout"]) == ("utf-8", "hé")


async def test_exec_validation(http: httpx.AsyncClient, running: Running) -> None:
    capsule, headers = running
    url = f"/v1/capsules/{capsule}/exec"
    assert_error(await http.post(url, json={}, headers=headers), 400, "invalid_request")
    assert_error(await http.post(url, json={"cmd": ""}, headers=headers), 400, "invalid_request")
    assert_error(
        await http.post(url, json={"cmd": "x", "timeout_sec": -1}, headers=headers), 400, "invalid_request"
    )
    assert_error(
        await http.post(url, json={"cmd": "x", "args": "no"}, headers=headers), 400, "invalid_request"
    )


async def processes(http: httpx.AsyncClient, running: Running) -> list[dict[str, Any]]:
    capsule, headers = running
    resp = await http.get(f"/v1/capsules/{capsule}/processes", headers=headers)
    assert resp.status_code == 200, resp.text
    found: list[dict[str, Any]] = resp.json()["processes"]
    return found


async def until_gone(http: httpx.AsyncClient, running: Running, tags: set[str]) -> list[dict[str, Any]]:
    for _ in range(100):
        procs = await processes(http, running)
        if not tags & {p.get("tag") for p in procs}:
            return procs
        await asyncio.sleep(0.05)
    raise AssertionError(f"processes {tags} still running: {procs}")


async def test_background_and_processes(http: httpx.AsyncClient, running: Running) -> None:
    capsule, headers = running
    url = f"/v1/capsules/{capsule}/exec"
    started = await http.post(url, json={"cmd": "sleep", "args": ["61"], "background": True}, headers=headers)
    assert started.status_code == 202, started.text
    first = started.json()
    assert first["tag"].startswith("proc-") and len(first["tag"]) == 13 and first["pid"] > 0
    assert (first["sandbox_id"], first["cmd"]) == (capsule, "sleep")
    body = {"cmd": "/bin/sh", "args": ["-c", "echo up > /tmp/web.txt; exec sleep 62"], "background": True}
    tagged = await http.post(url, json={**body, "tag": "web"}, headers=headers)
    assert tagged.status_code == 202 and tagged.json()["tag"] == "web" and tagged.json()["pid"] > 0
    procs = {p["tag"]: p for p in await processes(http, running)}
    assert {first["tag"], "web"} <= set(procs)
    assert (procs[first["tag"]]["pid"], procs[first["tag"]]["cmd"], procs[first["tag"]]["args"]) == (
        first["pid"],
        "sleep",
        ["61"],
    )
    assert (await sh(http, running, "cat /tmp/web.txt; ps -eo args | grep -c '^sleep 6[12]'"))["stdout"] == (
        "up\n2\n"
    )

    assert (await http.delete(f"/v1/capsules/{capsule}/processes/web", headers=headers)).status_code == 204
    pid = first["pid"]
    resp = await http.delete(f"/v1/capsules/{capsule}/processes/{pid}?signal=SIGTERM", headers=headers)
    assert resp.status_code == 204
    await until_gone(http, running, {first["tag"], "web"})
    assert (await sh(http, running, "ps -eo args | grep -c '^sleep 6[12]' || true"))["stdout"] == "0\n"

    bad = await http.delete(f"/v1/capsules/{capsule}/processes/1?signal=SIGHUP", headers=headers)
    assert_error(bad, 400, "invalid_request")
    assert_error(
        await http.delete(f"/v1/capsules/{capsule}/processes/99999", headers=headers), 404, "not_found"
    )
    assert_error(
        await http.delete(f"/v1/capsules/{capsule}/processes/no-such-tag", headers=headers), 404, "not_found"
    )



async def test_agent_takes_the_contracts_signals_only(http: httpx.AsyncClient, running: Running, agent: Agent) -> None:
    """The host agent allows the signals the API does (one list, `proto.limits`), and its refusal names them."""
    capsule, headers = running
    url = f"/v1/capsules/{capsule}/exec"
    body = {"cmd": "sleep", "args": ["63"], "background": True, "tag": "signals"}
    assert (await http.post(url, json=body, headers=headers)).status_code == 202
    ref = pb.ProcessRef(sandbox_id=capsule, tag="signals")
    for signal in ("SIGHUP", "SIGINT"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await agent.stub.KillProcess(pb.KillProcessRequest(process=ref, signal=signal), metadata=METADATA)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "SIGKILL, SIGTERM" in (err.value.details() or "")
    assert "signals" in {p.get("tag") for p in await processes(http, running)}
    resp = await http.delete(f"/v1/capsules/{capsule}/processes/signals?signal=SIGTERM", headers=headers)
    assert resp.status_code == 204
    await until_gone(http, running, {"signals"})

async def test_files_round_trip(http: httpx.AsyncClient, running: Running) -> None:
    capsule, headers = running
    base = f"/v1/capsules/{capsule}/files"
    payload = os.urandom(200_000)
    resp = await http.post(
        f"{base}/write", files={"file": ("upload", payload)}, data={"path": "/srv/d/a.bin"}, headers=headers
    )
    assert resp.status_code == 204, resp.text
    # The bytes are in the capsule, as the capsule's own tools see them.
    digest = (await sh(http, running, "sha256sum /srv/d/a.bin"))["stdout"].split()[0]
    assert digest == hashlib.sha256(payload).hexdigest()
    assert (
        await http.post(f"{base}/read", json={"path": "/srv/d/a.bin"}, headers=headers)
    ).content == payload
    async with http.stream(
        "POST", f"{base}/stream/read", json={"path": "/srv/d/a.bin"}, headers=headers
    ) as stream:
        assert stream.status_code == 200
        assert b"".join([chunk async for chunk in stream.aiter_bytes()]) == payload
    listing = (await http.post(f"{base}/list", json={"path": "/srv/d", "depth": 1}, headers=headers)).json()
    assert [e["name"] for e in listing["entries"]] == ["a.bin"]
    entry = listing["entries"][0]
    assert (entry["path"], entry["type"], entry["size"]) == ("/srv/d/a.bin", "file", len(payload))
    assert "symlink_target" not in entry

    # An upload replaces the file whole.
    resp = await http.post(
        f"{base}/write", files={"file": ("upload", b"short")}, data={"path": "/srv/d/a.bin"}, headers=headers
    )
    assert resp.status_code == 204
    assert (
        await http.post(f"{base}/read", json={"path": "/srv/d/a.bin"}, headers=headers)
    ).content == b"short"

    made = await http.post(f"{base}/mkdir", json={"path": "/srv/d/sub"}, headers=headers)
    assert made.status_code == 200 and made.json()["entry"]["type"] == "directory"
    assert (await sh(http, running, "test -d /srv/d/sub && echo yes"))["stdout"] == "yes\n"
    assert_error(
        await http.post(f"{base}/mkdir", json={"path": "/srv/d/sub"}, headers=headers), 409, "conflict"
    )
    assert (await http.post(f"{base}/remove", json={"path": "/srv/d"}, headers=headers)).status_code == 204
    assert_error(await http.post(f"{base}/list", json={"path": "/srv/d"}, headers=headers), 404, "not_found")
    assert (await sh(http, running, "test -e /srv/d || echo gone"))["stdout"] == "gone\n"


async def test_file_made_by_a_command_is_readable(http: httpx.AsyncClient, running: Running) -> None:
    capsule, headers = running
    await sh(http, running, "mkdir -p /srv/made && head -c 70000 /dev/zero | tr '\\0' 'z' > /srv/made/z.txt")
    try:
        resp = await http.post(
            f"/v1/capsules/{capsule}/files/read", json={"path": "/srv/made/z.txt"}, headers=headers
        )
        assert resp.status_code == 200 and resp.content == b"z" * 70000
    finally:
        await sh(http, running, "rm -rf /srv/made")


def multipart_head(path: str, boundary: str = "str3am") -> bytes:
    """The start of a multipart body: the `path` field, then the header of the `file` part."""
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="path"\r\n\r\n{path}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="u"\r\n\r\n'
    ).encode()


def chunked_multipart(path: str, pieces: list[bytes], boundary: str = "str3am") -> AsyncIterator[bytes]:
    """A multipart body (`path`, then `file`) sent without Content-Length, piece by piece."""

    async def body() -> AsyncIterator[bytes]:
        yield multipart_head(path, boundary)
        for piece in pieces:
            yield piece
        yield f"\r\n--{boundary}--\r\n".encode()

    return body()


async def test_streamed_upload_round_trips(http: httpx.AsyncClient, running: Running) -> None:
    """5 MB through /files/stream/write in odd-sized pieces arrives byte-exact."""
    capsule, headers = running
    payload = os.urandom(5 * 1024 * 1024 + 123)
    pieces = [payload[i : i + 100_003] for i in range(0, len(payload), 100_003)]
    h = {**headers, "Content-Type": "multipart/form-data; boundary=str3am"}
    url = f"/v1/capsules/{capsule}/files/stream/write"
    resp = await http.post(url, content=chunked_multipart("/srv/stream/big.bin", pieces), headers=h)
    assert resp.status_code == 204, resp.text
    try:
        async with http.stream(
            "POST",
            f"/v1/capsules/{capsule}/files/stream/read",
            json={"path": "/srv/stream/big.bin"},
            headers=headers,
        ) as stream:
            assert stream.status_code == 200
            downloaded = b"".join([chunk async for chunk in stream.aiter_bytes()])
        assert len(downloaded) == len(payload) and downloaded == payload
        assert await entries(http, running, "/srv/stream") == ["big.bin"]  # no temporary file is left
        size = await sh(http, running, "wc -c < /srv/stream/big.bin")
        assert size["stdout"] == f"{len(payload)}\n"
    finally:
        await sh(http, running, "rm -rf /srv/stream")


async def test_missing_file_is_404_before_body(http: httpx.AsyncClient, running: Running) -> None:
    capsule, headers = running
    for route in ("read", "stream/read"):
        resp = await http.post(
            f"/v1/capsules/{capsule}/files/{route}", json={"path": "/nope"}, headers=headers
        )
        assert_error(resp, 404, "not_found")
    resp = await http.post(f"/v1/capsules/{capsule}/files/list", json={"path": "/nope"}, headers=headers)
    assert_error(resp, 404, "not_found")


async def test_bad_paths_are_400(http: httpx.AsyncClient, running: Running) -> None:
    capsule, headers = running
    base = f"/v1/capsules/{capsule}/files"
    for path in ("", "/tmp/a\x00b"):
        for route in ("read", "stream/read", "list", "mkdir", "remove"):
            assert_error(
                await http.post(f"{base}/{route}", json={"path": path}, headers=headers),
                400,
                "invalid_request",
            )
        resp = await http.post(
            f"{base}/write", files={"file": ("u", b"x")}, data={"path": path}, headers=headers
        )
        assert_error(resp, 400, "invalid_request")


def escapes(host_path: Path) -> list[str]:
    """Ways of naming a host path that try to climb out of the capsule: relative ones (resolved from the
    home directory), and absolute ones that go above the root."""
    rest = str(host_path).lstrip("/")
    return [f"../../../../../../{rest}", f"/../../../{rest}", f"/tmp/../../../../{rest}", f"//..//..//{rest}"]


async def upload(http: httpx.AsyncClient, running: Running, route: str, path: str, data: bytes) -> httpx.Response:
    capsule, headers = running
    url = f"/v1/capsules/{capsule}/files/{route}"
    return await http.post(url, files={"file": ("upload", data)}, data={"path": path}, headers=headers)


async def new_in_capsule(http: httpx.AsyncClient, running: Running, path: Path) -> str:
    """The topmost directory of `path` the capsule does not have yet: what removing undoes a test's writes."""
    ancestors = [str(p) for p in reversed(path.parents)][1:] + [str(path)]
    script = " ".join(f"test -e '{p}' || {{ echo '{p}'; exit; }};" for p in ancestors)
    top = (await sh(http, running, script))["stdout"].strip()
    assert top, f"{path} already exists in the capsule"
    return top


async def test_file_routes_never_reach_the_host(http: httpx.AsyncClient, running: Running, tmp_path: Path) -> None:
    """A marker on the host, at a path the capsule does not have: no file route, however the path climbs,
    reads, lists or removes it, and every write lands inside the capsule."""
    capsule, headers = running
    base = f"/v1/capsules/{capsule}/files"
    secret = os.urandom(16).hex().encode()
    marker = tmp_path / "marker.txt"
    marker.write_bytes(secret)
    top = await new_in_capsule(http, running, tmp_path)
    try:
        for path in escapes(marker):
            for route in ("read", "stream/read"):
                resp = await http.post(f"{base}/{route}", json={"path": path}, headers=headers)
                assert_error(resp, 404, "not_found")
                assert secret not in resp.content
            assert_error(await http.post(f"{base}/remove", json={"path": path}, headers=headers), 404, "not_found")
        for path in escapes(tmp_path):
            listed = await http.post(f"{base}/list", json={"path": path, "depth": 3}, headers=headers)
            assert_error(listed, 404, "not_found")
            assert_error(await http.post(f"{base}/remove", json={"path": path}, headers=headers), 404, "not_found")
        assert marker.read_bytes() == secret

        # Writes through the same paths land in the capsule, at the normalized path, never on the host.
        planted: dict[str, bytes] = {}
        for i, path in enumerate(escapes(tmp_path / "planted")):
            route = ("write", "stream/write")[i % 2]
            data = f"planted {i} via {route}".encode()
            assert (await upload(http, running, route, f"{path}-{i}", data)).status_code == 204
            planted[f"planted-{i}"] = data
        made = await http.post(f"{base}/mkdir", json={"path": escapes(tmp_path / "made")[0]}, headers=headers)
        assert made.status_code == 200, made.text
        assert made.json()["entry"]["path"] == str(tmp_path / "made")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["marker.txt"]
        for name, data in planted.items():
            inside = await sh(http, running, f"cat '{tmp_path / name}'")
            assert inside["stdout"].encode() == data
        assert (await sh(http, running, f"test -d '{tmp_path / 'made'}' && echo dir"))["stdout"] == "dir\n"
        # ... and what the climbing paths list is the capsule's directory, which has no marker.
        listed = await http.post(f"{base}/list", json={"path": escapes(tmp_path)[1]}, headers=headers)
        assert sorted(e["name"] for e in listed.json()["entries"]) == sorted([*planted, "made"])
        removed = await http.post(f"{base}/remove", json={"path": escapes(tmp_path)[2]}, headers=headers)
        assert removed.status_code == 204
        assert (await sh(http, running, f"test -e '{tmp_path}' || echo gone"))["stdout"] == "gone\n"
        assert marker.read_bytes() == secret
    finally:
        await sh(http, running, f"rm -rf '{top}'")


async def test_climbing_write_lands_in_the_capsule(http: httpx.AsyncClient, running: Running) -> None:
    """`../../../../tmp/x` is the capsule's /tmp/x: there it is read back, the host's /tmp never sees it."""
    name = f"wrenn-escape-{os.urandom(6).hex()}"
    host_file = Path("/tmp") / name
    try:
        for route in ("write", "stream/write"):
            data = f"written via {route}".encode()
            assert (await upload(http, running, route, f"../../../../tmp/{name}", data)).status_code == 204
            assert not host_file.exists()
            assert (await sh(http, running, f"cat /tmp/{name}"))["stdout"].encode() == data
        # Reading the capsule's own files through an absolute path that climbs above the root.
        capsule, headers = running
        read = await http.post(
            f"/v1/capsules/{capsule}/files/read", json={"path": "/../../etc/../tmp/" + name}, headers=headers
        )
        assert read.status_code == 200 and read.content == b"written via stream/write"
        hostname = await http.post(
            f"/v1/capsules/{capsule}/files/read", json={"path": "/../../../etc/hostname"}, headers=headers
        )
        assert hostname.content.decode() == (await sh(http, running, "cat /etc/hostname"))["stdout"]
    finally:
        await sh(http, running, f"rm -f /tmp/{name}")
    assert not host_file.exists()


async def test_symlink_to_a_host_path_stays_in_the_capsule(
    http: httpx.AsyncClient, running: Running, tmp_path: Path
) -> None:
    """A link made in the capsule to the host's directory resolves in the capsule, where nothing is there."""
    capsule, headers = running
    base = f"/v1/capsules/{capsule}/files"
    secret = os.urandom(16).hex().encode()
    (tmp_path / "marker.txt").write_bytes(secret)
    link = f"/tmp/wrenn-link-{os.urandom(6).hex()}"
    await sh(http, running, f"ln -s '{tmp_path}' {link}")
    try:
        for route in ("read", "stream/read"):
            resp = await http.post(f"{base}/{route}", json={"path": f"{link}/marker.txt"}, headers=headers)
            assert_error(resp, 404, "not_found")
        assert_error(await http.post(f"{base}/list", json={"path": link}, headers=headers), 404, "not_found")
        resp = await http.post(f"{base}/remove", json={"path": f"{link}/marker.txt"}, headers=headers)
        assert_error(resp, 404, "not_found")
        # The link dangles in the capsule: nothing to write into.
        assert_error(await upload(http, running, "write", f"{link}/planted", b"x"), 404, "not_found")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["marker.txt"]
        assert (tmp_path / "marker.txt").read_bytes() == secret
    finally:
        await sh(http, running, f"rm -rf {link} '{tmp_path}'")


async def test_upload_needs_both_parts(http: httpx.AsyncClient, running: Running) -> None:
    capsule, headers = running
    url = f"/v1/capsules/{capsule}/files/write"
    assert_error(
        await http.post(url, data={"path": "/srv/x"}, files={"other": ("u", b"x")}, headers=headers),
        400,
        "invalid_request",
    )
    assert_error(await http.post(url, files={"file": ("u", b"x")}, headers=headers), 400, "invalid_request")
    assert_error(await http.post(url, json={"path": "/srv/x"}, headers=headers), 400, "invalid_request")
    assert (await sh(http, running, "test -e /srv/x || echo absent"))["stdout"] == "absent\n"


async def test_file_before_path_still_works(http: httpx.AsyncClient, running: Running) -> None:
    capsule, headers = running
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="u"\r\n\r\n'.encode()
        + b"early bytes"
        + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="path"\r\n\r\n'.encode()
        + f"/tmp/late.txt\r\n--{boundary}--\r\n".encode()
    )
    h = {**headers, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    assert (
        await http.post(f"/v1/capsules/{capsule}/files/write", content=body, headers=h)
    ).status_code == 204
    resp = await http.post(
        f"/v1/capsules/{capsule}/files/read", json={"path": "/tmp/late.txt"}, headers=headers
    )
    assert resp.content == b"early bytes"


async def entries(http: httpx.AsyncClient, running: Running, path: str) -> list[str]:
    capsule, headers = running
    resp = await http.post(f"/v1/capsules/{capsule}/files/list", json={"path": path}, headers=headers)
    assert resp.status_code == 200, resp.text
    return [e["name"] for e in resp.json()["entries"]]


async def test_upload_limit_is_413_and_leaves_nothing(http: httpx.AsyncClient, running: Running) -> None:
    capsule, headers = running
    url = f"/v1/capsules/{capsule}/files/write"
    await sh(http, running, "mkdir -p /srv/limit")
    try:
        big = b"\0" * (100 * 1024 * 1024 + 1)
        declared = await http.post(
            url, files={"file": ("u", big)}, data={"path": "/srv/limit/a"}, headers=headers
        )
        assert_error(declared, 413, "too_large")
        del big

        # No Content-Length: the limit is enforced while the bytes stream to the capsule; the part that
        # already reached it is discarded, not kept as a truncated file.
        h = {**headers, "Content-Type": "multipart/form-data; boundary=str3am"}
        pieces = [b"\1" * (1024 * 1024)] * 101
        resp = await http.post(url, content=chunked_multipart("/srv/limit/b", pieces), headers=h)
        assert_error(resp, 413, "too_large")
        await asyncio.sleep(0.3)  # a cancelled upload is torn down after the answer: give it a moment
        assert await entries(http, running, "/srv/limit") == []
    finally:
        await sh(http, running, "rm -rf /srv/limit")


async def test_interrupted_upload_leaves_nothing(running: Running, server: ServerThread) -> None:
    """The client goes away in the middle of a streamed upload: the partial file (visible while the bytes
    flow) is removed, and the target never appears."""
    capsule, headers = running
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as http:
        await sh(http, running, "mkdir -p /srv/cut")
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            head = (
                f"POST /v1/capsules/{capsule}/files/stream/write HTTP/1.1\r\nHost: cp\r\n"
                f"X-API-Key: {headers['X-API-Key']}\r\n"
                "Content-Type: multipart/form-data; boundary=str3am\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            writer.write(head.encode())
            # The body's start and 2 MiB of the file, in HTTP chunks; the rest of the body never comes.
            for piece in [multipart_head("/srv/cut/file.bin"), *[b"\2" * (256 * 1024)] * 8]:
                writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                await writer.drain()
            seen: list[str] = []
            for _ in range(200):
                seen = await entries(http, running, "/srv/cut")
                if seen:
                    break
                await asyncio.sleep(0.02)
            assert len(seen) == 1 and seen[0].startswith(".file.bin.") and seen[0].endswith(".part"), seen
        finally:
            writer.transport.abort()
            await asyncio.sleep(0)
        try:
            for _ in range(200):
                seen = await entries(http, running, "/srv/cut")
                if not seen:
                    break
                await asyncio.sleep(0.05)
            assert seen == []
            await asyncio.sleep(0.3)
            assert await entries(http, running, "/srv/cut") == []
        finally:
            await sh(http, running, "rm -rf /srv/cut")
