"""/health, /init defaults, /envs, /metrics, and the error contract."""

from __future__ import annotations

import pwd
from collections.abc import AsyncIterator

import httpx
import pytest

from .conftest import sh, unb64


async def test_health(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert isinstance(response.json()["version"], str)


async def test_metrics(client: httpx.AsyncClient) -> None:
    metrics = (await client.get("/metrics")).json()
    assert set(metrics) == {
        "ts",
        "cpu_count",
        "cpu_used_pct",
        "mem_total",
        "mem_used",
        "disk_used",
        "disk_total",
    }
    assert 0 <= metrics["cpu_used_pct"] <= 100
    assert 0 < metrics["mem_used"] < metrics["mem_total"]
    assert 0 < metrics["disk_used"] <= metrics["disk_total"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/process/start", b"{not json"),
        ("/process/start", b"[1, 2]"),
        ("/process/start", b'{"cmd": 5, "mode": "run"}'),
        ("/process/start", b'{"cmd": "true", "mode": "sideways"}'),
        ("/process/start", b'{"cmd": "true", "args": "x", "mode": "run"}'),
        ("/process/start", b'{"cmd": "true", "envs": {"A": 1}, "mode": "run"}'),
        ("/process/start", b'{"cmd": "true", "pty": {"cols": 0, "rows": 5}, "mode": "run"}'),
        ("/process/start", b'{"mode": "run"}'),
        ("/process/signal", b'{"pid": true, "signal": "SIGTERM"}'),
        ("/fs/stat", b'{"path": 3}'),
        ("/init", b'{"envVars": "FOO=bar"}'),
        ("/init", b'{"defaultWorkdir": "relative"}'),
    ],
)
async def test_invalid_requests_are_400(client: httpx.AsyncClient, path: str, body: bytes) -> None:
    response = await client.post(path, content=body)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"
    assert "Traceback" not in response.text


async def test_unknown_endpoint_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/nope")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


async def test_keep_alive_and_chunked_json_body(client: httpx.AsyncClient) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b'{"cmd": "echo", "args": ["chunked"],'
        yield b' "mode": "run"}'

    for _ in range(3):
        response = await client.post("/process/start", content=body())
        assert response.status_code == 200, response.text
        assert response.json()["stdout"] == "Y2h1bmtlZAo="


async def test_init_defaults_apply_to_processes_and_files(
    fresh_client: httpx.AsyncClient, user: pwd.struct_passwd
) -> None:
    client = fresh_client
    assert (await client.get("/envs")).json() == {}
    init = {"defaultUser": user.pw_name, "envVars": {"FOO": "bar"}, "defaultWorkdir": user.pw_dir}
    assert (await client.post("/init", json=init)).status_code == 200
    assert (await client.get("/envs")).json() == {"FOO": "bar"}

    result = await sh(client, 'id -un; pwd; echo "$FOO $HOME $USER $LOGNAME"; cat /proc/self/oom_score_adj')
    lines = unb64(result["stdout"]).decode().splitlines()
    name, home = user.pw_name, user.pw_dir
    assert lines == [name, home, f"bar {home} {name} {name}", "100"]

    # The request wins over the defaults.
    result = await sh(client, "id -un; pwd; echo $FOO", user="root", cwd="/", envs={"FOO": "baz"})
    assert unb64(result["stdout"]).decode().split() == ["root", "/", "baz"]

    # New files and the directories made for them belong to the default user.
    uploaded = (await client.put("/files", params={"path": f"{home}/new/dir/f.txt"}, content=b"x")).json()
    assert (uploaded["owner"], uploaded["size"]) == (name, 1)
    listed = (await client.post("/fs/list", json={"path": f"{home}/new", "depth": 2})).json()["entries"]
    assert {e["owner"] for e in listed} == {name}
    made = (await client.post("/fs/mkdir", json={"path": "made"})).json()["entry"]  # relative: in the workdir
    assert (made["path"], made["owner"]) == (f"{home}/made", name)

    # A later /init replaces only what it names.
    assert (await client.post("/init", json={"envVars": {"X": "1"}})).status_code == 200
    result = await sh(client, "id -un; echo $X$FOO")
    assert unb64(result["stdout"]).decode().split() == [name, "1"]


async def test_init_unknown_user_is_404(fresh_client: httpx.AsyncClient) -> None:
    response = await fresh_client.post("/init", json={"defaultUser": "no-such-user-here"})
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


async def test_snapshot_prepare_resets_the_other_clients(fresh_client: httpx.AsyncClient) -> None:
    """Before a checkpoint envd drops every other client connection (with a reset) and keeps the caller's."""
    async with httpx.AsyncClient(base_url=str(fresh_client.base_url), timeout=10) as other:
        async with other.stream("POST", "/process/start", json={"cmd": "sleep", "args": ["30"], "mode": "stream"}) as s:
            lines = s.aiter_lines()
            assert '"start"' in await anext(lines)
            assert (await fresh_client.post("/snapshot/prepare", json={})).status_code == 204
            with pytest.raises(httpx.TransportError):
                async for _ in lines:
                    pass
        assert (await fresh_client.get("/health")).status_code == 200  # the caller's connection is still fine
    assert (await fresh_client.post("/snapshot/resume", json={})).status_code == 200
