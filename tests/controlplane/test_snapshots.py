"""The snapshot routes' refusals over HTTP (what a snapshot keeps is tested with the SDK: tests/sdk)."""

from __future__ import annotations

import httpx

from .harness import Harness
from .test_errors_auth import assert_error


async def test_refusals(http: httpx.AsyncClient, harness: Harness) -> None:
    team, key = await harness.team()
    _, other_key = await harness.team()
    headers = {"X-API-Key": key}
    running = await harness.capsule(team, "running")
    paused = await harness.capsule(team, "paused")
    post = "/v1/snapshots"
    assert_error(await http.post(post, json={"sandbox_id": "cl-" + "1" * 25}, headers=headers), 404, "not_found")
    assert_error(await http.post(post, json={"sandbox_id": "nope"}, headers=headers), 400, "invalid_request")
    assert_error(
        await http.post(post, json={"sandbox_id": running, "name": "../x"}, headers=headers), 400, "invalid_request"
    )
    assert_error(
        await http.post(post, json={"sandbox_id": running}, headers={"X-API-Key": other_key}), 404, "not_found"
    )
    message = assert_error(await http.post(post, json={"sandbox_id": paused}, headers=headers), 409, "invalid_state")
    assert message == "sandbox is not running (status: paused)"
    assert_error(
        await http.post(post, json={"sandbox_id": running, "name": "minimal"}, headers=headers),
        409,
        "template_name_taken",
    )
    assert_error(await http.get(post, params={"type": "other"}, headers=headers), 400, "invalid_request")
    assert_error(await http.delete(f"{post}/minimal", headers=headers), 403, "forbidden")
    assert_error(await http.delete(f"{post}/no-such-template", headers=headers), 404, "not_found")
    listed = (await http.get(post, headers=headers)).json()
    minimal = next(t for t in listed if t["name"] == "minimal")
    assert minimal["platform"] is True and minimal["type"] == "base"
