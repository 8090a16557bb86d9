"""The port proxy's refusals, by Host header (`{port}-{capsule id}.{domain}`) against the control plane over HTTP.
What it proxies is tested end to end with the SDK (tests/sdk/test_proxy.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from .harness import Harness, ServerThread, serving, settings_for
from .test_errors_auth import assert_error


def host(capsule: str, port: int = 8000) -> dict[str, str]:
    return {"Host": f"{port}-{capsule}.localhost"}


async def test_refusals(http: httpx.AsyncClient, harness: Harness) -> None:
    owner, owner_key = await harness.team()
    _, other_key = await harness.team()
    running = await harness.capsule(owner, "running")
    stopped = await harness.capsule(owner, "stopped")
    assert_error(await http.get("/", headers=host("cl-" + "1" * 25)), 404, "not_found")
    assert_error(await http.get("/", headers=host("cl-x")), 400, "invalid_request")
    assert_error(await http.get("/", headers=host(running, 0)), 400, "invalid_request")
    assert_error(await http.get("/", headers=host(running, 65536)), 400, "invalid_request")
    message = assert_error(await http.get("/", headers=host(stopped)), 409, "invalid_state")
    assert message == "sandbox is not running (status: stopped)"
    # Credentials are optional, but a key that is sent must be the capsule team's, and must be valid.
    assert_error(await http.get("/", headers={**host(running), "X-API-Key": other_key}), 404, "not_found")
    bad_key = "wrn_" + "0" * 32
    assert_error(await http.get("/", headers={**host(running), "X-API-Key": bad_key}), 401, "unauthorized")
    # A running row without a host has nowhere to go.
    assert_error(await http.get("/", headers={**host(running), "X-API-Key": owner_key}), 503, "host_unavailable")


async def test_websocket_refusals(http: httpx.AsyncClient, harness: Harness) -> None:
    """A WebSocket upgrade is refused with the same status and body as a request (before any upgrade)."""
    owner, owner_key = await harness.team()
    _, other_key = await harness.team()
    running = await harness.capsule(owner, "running")
    stopped = await harness.capsule(owner, "stopped")
    port = http.base_url.port
    cases = [
        (running, {"X-API-Key": other_key}, 404, "not_found"),
        (running, {"X-API-Key": "wrn_" + "0" * 32}, 401, "unauthorized"),
        (stopped, {}, 409, "invalid_state"),
        ("cl-" + "1" * 25, {}, 404, "not_found"),
    ]
    for capsule, headers, status, code in cases:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"ws://8000-{capsule}.localhost:{port}/ws", additional_headers=headers, proxy=None):
                pass
        response = refused.value.response
        assert response.status_code == status, (capsule, headers)
        assert json.loads(response.body)["error"]["code"] == code


async def test_api_routes_are_untouched_by_other_hosts(http: httpx.AsyncClient) -> None:
    assert (await http.get("/health", headers={"Host": "api.example.com"})).status_code == 200


@pytest.fixture
async def strict_server(database_url: str, tmp_path: Path) -> AsyncIterator[ServerThread]:
    async with serving(settings_for(tmp_path, database_url, proxy_auth="required")) as thread:
        yield thread


async def test_required_credentials(strict_server: ServerThread, harness: Harness) -> None:
    owner, owner_key = await harness.team()
    stopped = await harness.capsule(owner, "stopped")
    async with httpx.AsyncClient(base_url=strict_server.base_url) as client:
        assert_error(await client.get("/", headers=host(stopped)), 401, "unauthorized")
        with_key = {**host(stopped), "X-API-Key": owner_key}
        assert_error(await client.get("/", headers=with_key), 409, "invalid_state")
