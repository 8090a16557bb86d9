"""Every error a capsule's agent (envd) answers reaches the API as its contract error, never as a 502.

The chain is envd's error (envd/errors.py) → the host agent's twin (hostagent/envd_client.py, a gRPC status) →
the control plane's error (controlplane/errors.py). `test_every_envd_error_keeps_its_meaning` walks the whole
table; the others provoke each error a user can reach in a real capsule, through the API.
"""

from __future__ import annotations

import json

import grpc
import httpx
import pytest

from wrenn_server.controlplane.errors import from_rpc_error
from wrenn_server.envd import errors as envd_errors
from wrenn_server.hostagent.envd_client import _error

from .conftest import Running
from .test_errors_auth import assert_error
from .test_exec_files import sh

# The API's name for each of envd's errors: its own, except a failure inside envd, which is the agent's.
API_ERROR = {
    "invalid_request": (400, "invalid_request"),
    "forbidden": (403, "forbidden"),
    "not_found": (404, "not_found"),
    "conflict": (409, "conflict"),
    "too_large": (413, "too_large"),
    "timeout": (504, "timeout"),
    "internal_error": (502, "agent_error"),
}


def envd_error_classes() -> list[type[envd_errors.EnvdError]]:
    found, todo = [], [envd_errors.EnvdError]
    while todo:
        kind = todo.pop()
        found.append(kind)
        todo += kind.__subclasses__()
    return found


def test_the_table_covers_every_envd_error() -> None:
    assert {kind.code for kind in envd_error_classes()} == set(API_ERROR)


@pytest.mark.parametrize("kind", envd_error_classes(), ids=lambda kind: kind.__name__)
@pytest.mark.parametrize("with_code", [True, False], ids=["by-code", "by-status"])
def test_every_envd_error_keeps_its_meaning(kind: type[envd_errors.EnvdError], with_code: bool) -> None:
    """envd's answer as it sends it → the agent's error → the gRPC status it travels as → the API error."""
    message = f"what went wrong ({kind.__name__})"
    body = json.dumps({"code": kind.code, "message": message} if with_code else {"message": message}).encode()
    agent_error = _error(kind.status, body)
    rpc = grpc.aio.AioRpcError(agent_error.status, grpc.aio.Metadata(), grpc.aio.Metadata(), agent_error.message)
    api_error = from_rpc_error(rpc)
    assert (api_error.status, api_error.code) == API_ERROR[kind.code]
    assert api_error.message == message


async def test_writing_where_the_capsule_refuses_is_403(http: httpx.AsyncClient, running: Running) -> None:
    capsule, headers = running
    await sh(http, running, "mkdir -p /mnt/ro && mount -t tmpfs -o ro tmpfs /mnt/ro")
    try:
        assert (await sh(http, running, "grep -c ' /mnt/ro tmpfs ro' /proc/mounts"))["stdout"] == "1\n"
        resp = await http.post(
            f"/v1/capsules/{capsule}/files/write",
            files={"file": ("upload", b"x")},
            data={"path": "/mnt/ro/file"},
            headers=headers,
        )
        assert "read-only" in assert_error(resp, 403, "forbidden")
        resp = await http.post(f"/v1/capsules/{capsule}/files/mkdir", json={"path": "/mnt/ro/d"}, headers=headers)
        assert_error(resp, 403, "forbidden")
    finally:
        await sh(http, running, "umount /mnt/ro; rmdir /mnt/ro")


async def test_a_directory_read_as_a_file_is_400(http: httpx.AsyncClient, running: Running) -> None:
    capsule, headers = running
    listed = await http.post(f"/v1/capsules/{capsule}/files/list", json={"path": "/etc"}, headers=headers)
    assert listed.status_code == 200, listed.text  # it exists, and is a directory
    for route in ("read", "stream/read"):
        resp = await http.post(f"/v1/capsules/{capsule}/files/{route}", json={"path": "/etc"}, headers=headers)
        assert_error(resp, 400, "invalid_request")


async def test_a_directory_made_twice_is_409(http: httpx.AsyncClient, running: Running) -> None:
    capsule, headers = running
    url = f"/v1/capsules/{capsule}/files/mkdir"
    try:
        first = await http.post(url, json={"path": "/tmp/envd-errors-twice"}, headers=headers)
        assert first.status_code == 200, first.text
        assert_error(await http.post(url, json={"path": "/tmp/envd-errors-twice"}, headers=headers), 409, "conflict")
    finally:
        await sh(http, running, "rm -rf /tmp/envd-errors-twice")


async def test_a_missing_path_is_404(http: httpx.AsyncClient, running: Running) -> None:
    capsule, headers = running
    assert (await sh(http, running, "test -e /tmp/envd-errors-nope || echo absent"))["stdout"] == "absent\n"
    for route in ("read", "list", "remove"):
        resp = await http.post(
            f"/v1/capsules/{capsule}/files/{route}", json={"path": "/tmp/envd-errors-nope"}, headers=headers
        )
        assert_error(resp, 404, "not_found")
