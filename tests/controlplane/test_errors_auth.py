"""Auth and the error contract: every failure is `{"error":{"code","message"}}` with the right status."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import yaml
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from wrenn_server.controlplane.ids import Kind, format_id

from .conftest import Running
from .harness import Harness, ServerThread, serving, settings_for


def assert_error(resp: httpx.Response, status: int, code: str) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return str(body["error"]["message"])


async def test_health(http: httpx.AsyncClient) -> None:
    resp = await http.get("/health")
    assert resp.status_code == 200
    assert resp.json()["status"] == "ok"
    assert resp.json()["version"]


async def test_openapi_yaml_and_docs(http: httpx.AsyncClient) -> None:
    resp = await http.get("/openapi.yaml")
    assert resp.status_code == 200
    assert "/v1/capsules" in resp.text
    assert (await http.get("/docs")).status_code == 200


async def test_openapi_documents_errors_and_uploads(http: httpx.AsyncClient) -> None:
    """The document describes what the server answers: the contract error body on every operation (not
    FastAPI's 422, which the server never sends), and the multipart body the uploads take."""
    document = (await http.get("/openapi.json")).json()
    assert yaml.safe_load((await http.get("/openapi.yaml")).text) == document
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert schemas["ErrorBody"]["required"] == ["error"]
    assert schemas["ErrorDetail"]["required"] == ["code", "message"]
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    operations = [(path, op) for path, item in document["paths"].items() for op in item.values()]
    assert len(operations) >= 29
    for path, op in operations:
        assert "422" not in op["responses"], path
        for status in ("4XX", "5XX"):
            assert op["responses"][status]["content"]["application/json"]["schema"] == error_ref, path
    for route in ("write", "stream/write"):
        body = document["paths"][f"/v1/capsules/{{id}}/files/{route}"]["post"]["requestBody"]
        form = body["content"]["multipart/form-data"]["schema"]
        assert body["required"] and form["required"] == ["path", "file"]
        assert (form["properties"]["file"]["type"], form["properties"]["file"]["format"]) == ("string", "binary")


async def test_openapi_states_the_limits(http: httpx.AsyncClient) -> None:
    """Each limit is declared once, on the schema: the document states what the server enforces."""
    document = (await http.get("/openapi.json")).json()
    create = document["components"]["schemas"]["CreateCapsule"]["properties"]
    sizes = {name: create[name]["anyOf"][0] for name in ("vcpus", "memory_mb", "timeout_sec", "disk_size_mb")}
    assert all((size["minimum"], size["maximum"]) == (0, 2**31 - 1) for size in sizes.values()), sizes
    assert {"minimum": 128} in sizes["memory_mb"]["anyOf"] and {"const": 0} in sizes["memory_mb"]["anyOf"]
    metadata = create["metadata"]["anyOf"][0]
    assert metadata["maxProperties"] == 20 and metadata["propertyNames"]["pattern"].startswith("^[a-zA-Z0-9]")
    kill = document["paths"]["/v1/capsules/{id}/processes/{selector}"]["delete"]["parameters"]
    signal = next(p for p in kill if p["name"] == "signal")["schema"]
    assert (signal["enum"], signal["default"]) == (["SIGKILL", "SIGTERM"], "SIGKILL")
    stats = document["paths"]["/v1/capsules/stats"]["get"]["parameters"]
    assert next(p for p in stats if p["name"] == "range")["schema"]["enum"] == ["5m", "1h", "6h", "24h", "30d"]


async def test_missing_key_is_401(http: httpx.AsyncClient) -> None:
    assert_error(await http.get("/v1/capsules"), 401, "unauthorized")


async def test_wrong_key_is_401(http: httpx.AsyncClient) -> None:
    resp = await http.get("/v1/capsules", headers={"X-API-Key": "wrn_" + "0" * 32})
    assert_error(resp, 401, "unauthorized")


async def test_bad_bearer_is_401(http: httpx.AsyncClient) -> None:
    resp = await http.get("/v1/capsules", headers={"Authorization": "Bearer not-a-jwt"})
    assert_error(resp, 401, "unauthorized")


async def test_auth_checked_before_id(http: httpx.AsyncClient) -> None:
    assert_error(await http.get("/v1/capsules/nonsense"), 401, "unauthorized")


async def test_valid_key_lists_nothing(http: httpx.AsyncClient, team: tuple[object, str]) -> None:
    resp = await http.get("/v1/capsules", headers={"X-API-Key": team[1]})
    assert resp.status_code == 200
    assert resp.json() == []


async def test_malformed_json_is_400(http: httpx.AsyncClient, team: tuple[object, str]) -> None:
    headers = {"X-API-Key": team[1], "Content-Type": "application/json"}
    resp = await http.post("/v1/capsules", content=b'{"vcpus": 1', headers=headers)
    assert_error(resp, 400, "invalid_request")


async def test_wrong_type_names_the_field(http: httpx.AsyncClient, team: tuple[object, str]) -> None:
    resp = await http.post("/v1/capsules", json={"vcpus": "two"}, headers={"X-API-Key": team[1]})
    assert "vcpus" in assert_error(resp, 400, "invalid_request")


async def test_body_not_an_object_is_400(http: httpx.AsyncClient, team: tuple[object, str]) -> None:
    resp = await http.post("/v1/capsules", json=[1, 2], headers={"X-API-Key": team[1]})
    assert_error(resp, 400, "invalid_request")


async def test_malformed_capsule_id_is_400(http: httpx.AsyncClient, team: tuple[object, str]) -> None:
    headers = {"X-API-Key": team[1]}
    for bad in ("nonsense", "cl-abc", "usr-" + "0" * 25, "cl-" + "z" * 25, "cl-" + "A" * 25):
        message = assert_error(await http.get(f"/v1/capsules/{bad}", headers=headers), 400, "invalid_request")
        assert message == "invalid sandbox ID"


async def test_unknown_capsule_is_404(http: httpx.AsyncClient, team: tuple[object, str]) -> None:
    resp = await http.get("/v1/capsules/cl-" + "1" * 25, headers={"X-API-Key": team[1]})
    assert assert_error(resp, 404, "not_found") == "sandbox not found"


async def test_other_teams_capsule_is_404(http: httpx.AsyncClient, harness: Harness) -> None:
    owner, _ = await harness.team()
    _, other_key = await harness.team()
    capsule = await harness.capsule(owner, "running")
    headers = {"X-API-Key": other_key}
    assert_error(await http.get(f"/v1/capsules/{capsule}", headers=headers), 404, "not_found")
    assert_error(await http.delete(f"/v1/capsules/{capsule}", headers=headers), 404, "not_found")
    exec_body = {"cmd": "true"}
    assert_error(
        await http.post(f"/v1/capsules/{capsule}/exec", json=exec_body, headers=headers), 404, "not_found"
    )
    assert capsule not in [c["id"] for c in (await http.get("/v1/capsules", headers=headers)).json()]


async def test_unknown_route_and_method(http: httpx.AsyncClient) -> None:
    assert_error(await http.get("/v1/nope"), 404, "not_found")
    assert_error(await http.put("/health"), 405, "method_not_allowed")


async def test_json_body_limit_is_413(http: httpx.AsyncClient, team: tuple[object, str]) -> None:
    big = b'{"template": "' + b"a" * (2 * 1024 * 1024) + b'"}'
    resp = await http.post(
        "/v1/capsules", content=big, headers={"X-API-Key": team[1], "Content-Type": "application/json"}
    )
    assert_error(resp, 413, "too_large")


async def test_user_jwt(http: httpx.AsyncClient, harness: Harness) -> None:
    from datetime import timedelta

    import jwt as pyjwt

    from wrenn_server.controlplane.db.models import User, UserTeam
    from wrenn_server.controlplane.ids import new_uuid
    from wrenn_server.controlplane.services.auth import issue_user_jwt

    team_id, _ = await harness.team()
    secret = harness.settings.jwt_secret
    async with harness.sessionmaker() as session:
        active = User(id=new_uuid(), email=f"{new_uuid()}@example.com", name="A", status="active")
        disabled = User(id=new_uuid(), email=f"{new_uuid()}@example.com", name="D", status="disabled")
        session.add_all([active, disabled])
        await session.flush()
        session.add_all([UserTeam(team_id=team_id, user_id=u.id, role="owner") for u in (active, disabled)])
        await session.commit()
    other_team, _ = await harness.team()
    capsule = await harness.capsule(team_id, "running")
    token = issue_user_jwt(secret, active, team_id, "owner")
    resp = await http.get(f"/v1/capsules/{capsule}", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200 and resp.json()["id"] == capsule

    denied = await http.get(
        "/v1/capsules",
        headers={"Authorization": f"Bearer {issue_user_jwt(secret, disabled, team_id, 'owner')}"},
    )
    assert_error(denied, 403, "forbidden")
    outsider = issue_user_jwt(secret, active, other_team, "owner")
    assert_error(
        await http.get("/v1/capsules", headers={"Authorization": f"Bearer {outsider}"}), 403, "forbidden"
    )
    claims = pyjwt.decode(token, secret, algorithms=["HS256"])
    claims["exp"] = claims["iat"] - int(timedelta(hours=1).total_seconds())
    expired = pyjwt.encode(claims, secret, algorithm="HS256")
    assert_error(
        await http.get("/v1/capsules", headers={"Authorization": f"Bearer {expired}"}), 401, "unauthorized"
    )
    forged = pyjwt.encode(
        {**claims, "exp": claims["iat"] + 3600}, "other-secret-" + "y" * 32, algorithm="HS256"
    )
    assert_error(
        await http.get("/v1/capsules", headers={"Authorization": f"Bearer {forged}"}), 401, "unauthorized"
    )
    assert_error(await http.get("/v1/capsules", headers={"Authorization": "Basic abc"}), 401, "unauthorized")


@pytest.fixture(scope="module")
async def ws_server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServerThread]:
    """A control plane that speaks WebSocket (the session's `server` runs without), on the same database."""
    async with serving(settings_for(tmp_path_factory.mktemp("cp-ws-auth"), database_url), "websockets-sansio") as cp:
        yield cp


OTHER_TEAM_REST: list[tuple[str, str, dict[str, Any]]] = [
    ("post", "/files/read", {"json": {"path": "/tmp/owned.txt"}}),
    ("post", "/files/stream/read", {"json": {"path": "/tmp/owned.txt"}}),
    ("post", "/files/list", {"json": {"path": "/tmp"}}),
    ("post", "/files/mkdir", {"json": {"path": "/tmp/other-made"}}),
    ("post", "/files/remove", {"json": {"path": "/tmp/owned.txt"}}),
    ("post", "/files/write", {"files": {"file": ("upload", b"x")}, "data": {"path": "/tmp/other-wrote"}}),
    ("post", "/files/stream/write", {"files": {"file": ("upload", b"x")}, "data": {"path": "/tmp/other-streamed"}}),
    ("get", "/processes", {}),
    ("delete", "/processes/owned", {}),
    ("post", "/ping", {}),
    ("post", "/pause", {}),
    ("post", "/resume", {}),
    ("get", "/metrics", {}),
]


async def exec_in(http: httpx.AsyncClient, running: Running, script: str, **fields: Any) -> httpx.Response:
    capsule, headers = running
    body = {"cmd": "/bin/sh", "args": ["-c", script], **fields}
    resp = await http.post(f"/v1/capsules/{capsule}/exec", json=body, headers=headers)
    assert resp.status_code in (200, 202), resp.text
    return resp


async def ws_frames(
    server: ServerThread, path: str, headers: dict[str, str], first: dict[str, Any] | None
) -> list[Any]:
    """Opens the WebSocket, sends `first` (if the server still listens), answers every frame until it closes."""
    url = server.base_url.replace("http://", "ws://") + path
    frames: list[Any] = []
    async with connect(url, additional_headers=headers, proxy=None, open_timeout=30) as ws:
        if first is not None:
            with contextlib.suppress(ConnectionClosed):  # the server may have refused and closed already
                await ws.send(json.dumps(first))
        with contextlib.suppress(ConnectionClosed):  # what it sent before closing is still read
            async for message in ws:
                frames.append(json.loads(message) if isinstance(message, str) else message)
        assert ws.close_code == 1000
    return frames


async def test_other_teams_running_capsule_is_404_everywhere(
    http: httpx.AsyncClient, harness: Harness, running: Running, ws_server: ServerThread
) -> None:
    """Another team's running capsule answers exactly as a capsule that does not exist, on every file,
    process and lifecycle route and on the WebSockets, and nothing it asks for happens in the capsule."""
    capsule, owner = running
    _, other_key = await harness.team()
    other = {"X-API-Key": other_key}
    unknown = format_id(Kind.SANDBOX, uuid.uuid4())
    secret = os.urandom(16).hex()
    await exec_in(http, running, f"printf {secret} > /tmp/owned.txt")
    owned = (await exec_in(http, running, "exec sleep 300", background=True, tag="owned")).json()["pid"]
    try:
        for method, suffix, kwargs in OTHER_TEAM_REST:
            resp = await http.request(method, f"/v1/capsules/{capsule}{suffix}", headers=other, **kwargs)
            assert assert_error(resp, 404, "not_found") == "sandbox not found", suffix
            assert secret.encode() not in resp.content
            missing = await http.request(method, f"/v1/capsules/{unknown}{suffix}", headers=other, **kwargs)
            assert resp.json() == missing.json(), suffix
        snapshot = await http.post("/v1/snapshots", json={"sandbox_id": capsule}, headers=other)
        assert_error(snapshot, 404, "not_found")

        marker = f"/tmp/other-ws-{secret}"
        sockets: list[tuple[str, dict[str, Any] | None]] = [
            ("/exec/stream", {"type": "start", "cmd": "/bin/sh", "args": ["-c", f"touch {marker}"]}),
            ("/pty", {"type": "start", "cmd": "/bin/sh", "args": ["-c", f"touch {marker}"]}),
            ("/pty", {"type": "connect", "tag": "owned"}),
            ("/processes/owned/stream", None),
            (f"/processes/{owned}/stream", None),
        ]
        for suffix, first in sockets:
            frames = await ws_frames(ws_server, f"/v1/capsules/{capsule}{suffix}", other, first)
            assert len(frames) == 1 and frames[0]["type"] == "error", (suffix, frames)
            assert frames[0]["data"] == "sandbox not found", (suffix, frames)
            missing_frames = await ws_frames(ws_server, f"/v1/capsules/{unknown}{suffix}", other, first)
            assert frames == missing_frames, suffix

        # Nothing of it happened: the file, the process and the capsule are as the owner left them.
        got = await http.get(f"/v1/capsules/{capsule}", headers=owner)
        assert got.json()["status"] == "running"
        state = await exec_in(
            http, running, f"cat /tmp/owned.txt; ls /tmp/other-made /tmp/other-wrote /tmp/other-streamed {marker}"
        )
        assert state.json()["stdout"] == secret and state.json()["stderr"].count("No such file") == 4, state.text
        procs = (await http.get(f"/v1/capsules/{capsule}/processes", headers=owner)).json()["processes"]
        assert {p["pid"]: p.get("tag") for p in procs}.get(owned) == "owned"
    finally:
        await http.delete(f"/v1/capsules/{capsule}/processes/owned", headers=owner)
        await exec_in(http, running, "rm -f /tmp/owned.txt")
