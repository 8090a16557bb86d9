"""Auth and the error contract: every failure is `{"error":{"code","message"}}` with the right status."""

from __future__ import annotations

import httpx

from .harness import Harness


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
