"""The port proxy through the SDK: `capsule.get_url(port)` reaches a service bound to 127.0.0.1 in the capsule,
over HTTP and WebSocket, resolved by name (`*.localhost` is loopback on this machine)."""

from __future__ import annotations

import os
import time
import uuid
from typing import TYPE_CHECKING
from urllib.parse import quote

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.webapp import PATH, SOURCE
from wrenn_server.controlplane.ids import Kind, format_id

if TYPE_CHECKING:
    from wrenn import Capsule

PORT = 8000


@pytest.fixture(scope="module")
def app_url(capsule: Capsule) -> str:
    capsule.files.write(PATH, SOURCE)
    capsule.commands.run(f"python3 {PATH} {PORT}", background=True)
    url = capsule.get_url(PORT)
    deadline = time.monotonic() + 30
    while httpx.get(f"{url}/ready", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the web app in the capsule did not come up"
        time.sleep(0.2)
    return url


def test_get_reaches_a_loopback_service(app_url: str) -> None:
    response = httpx.get(f"{app_url}/hello?x=1", headers={"X-API-Key": os.environ["WRENN_API_KEY"]})
    assert response.status_code == 200
    seen = response.json()
    assert seen["path"] == "/hello?x=1"
    assert seen["headers"]["x-forwarded-host"] == httpx.URL(app_url).netloc.decode()
    assert "x-api-key" not in seen["headers"], "the caller's key must not reach the capsule"


def test_requests_in_a_row_on_kept_alive_connections(app_url: str) -> None:
    """A GET without a body reaches the service without one: the service keeps its connection usable."""
    with httpx.Client() as client:
        statuses = [client.get(f"{app_url}/n/{i}").status_code for i in range(60)]
    assert statuses == [200] * 60


def test_post_body_round_trip(app_url: str) -> None:
    body = os.urandom(1 << 20)
    response = httpx.post(f"{app_url}/echo", content=body, timeout=60)
    assert response.status_code == 200 and response.content == body


def test_chunked_upload_and_head(app_url: str) -> None:
    parts = [os.urandom(70_000) for _ in range(5)]
    response = httpx.post(f"{app_url}/echo", content=iter(parts), timeout=60)
    assert response.status_code == 200 and response.content == b"".join(parts)
    with httpx.Client() as client:
        head = client.head(f"{app_url}/anything")
        assert (head.status_code, head.headers["content-length"], head.content) == (200, "12345", b"")
        assert client.get(f"{app_url}/after-head").status_code == 200  # the connection stayed in step


def test_redirect_to_the_service_itself_comes_back_through_the_proxy(app_url: str) -> None:
    response = httpx.get(f"{app_url}/redirect")
    assert response.status_code == 302
    assert response.headers["location"] == f"{app_url}/echo?from=redirect"


@pytest.mark.parametrize(
    ("location", "through_proxy"),
    [
        ("http://localhost:9000/x?y=1", "{port9000}/x?y=1"),  # another port of the capsule: its own proxy URL
        ("http://0.0.0.0/", "{port80}/"),
        ("https://example.com/away", "https://example.com/away"),  # elsewhere: left alone
        ("/relative/path", "/relative/path"),
    ],
)
def test_redirects_elsewhere(app_url: str, location: str, through_proxy: str) -> None:
    response = httpx.get(f"{app_url}/redirect?to={quote(location, safe='')}")
    assert response.status_code == 302
    other_port = app_url.replace(f"//{PORT}-", "//{}-", 1)
    expected = through_proxy.format(port9000=other_port.format(9000), port80=other_port.format(80))
    assert response.headers["location"] == expected


def test_websocket_echo(app_url: str) -> None:
    with connect(app_url.replace("http://", "ws://") + "/ws", open_timeout=30) as ws:
        ws.send("hello")
        assert ws.recv(timeout=30) == "echo:hello"
        payload = os.urandom(100_000)
        ws.send(payload)
        assert ws.recv(timeout=30) == payload


def test_port_without_a_listener_is_502(capsule: Capsule, app_url: str) -> None:
    response = httpx.get(capsule.get_url(8999))
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "agent_error"
    assert "8999" in response.json()["error"]["message"]


def test_unknown_capsule_is_404_and_bad_port_400(capsule: Capsule, app_url: str) -> None:
    unknown = format_id(Kind.SANDBOX, uuid.uuid4())
    response = httpx.get(app_url.replace(capsule.capsule_id, unknown))
    assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")
    response = httpx.get(app_url.replace(f"{PORT}-", "70000-", 1))
    assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_request")


def test_websocket_to_unknown_capsule_is_refused_with_404(capsule: Capsule, app_url: str) -> None:
    unknown = format_id(Kind.SANDBOX, uuid.uuid4())
    url = app_url.replace(capsule.capsule_id, unknown).replace("http://", "ws://")
    with pytest.raises(InvalidStatus) as refused:
        connect(url, open_timeout=30)
    assert refused.value.response.status_code == 404
    assert b'"not_found"' in refused.value.response.body


def test_websocket_to_a_port_without_a_listener_is_502(capsule: Capsule, app_url: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        connect(capsule.get_url(8999).replace("http://", "ws://") + "/ws", open_timeout=30)
    assert refused.value.response.status_code == 502
    assert b'"agent_error"' in refused.value.response.body and b"8999" in refused.value.response.body
