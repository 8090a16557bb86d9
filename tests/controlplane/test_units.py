"""Pure pieces: the ID scheme, settings, RPC error mapping, the streaming multipart reader."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wrenn_server.controlplane import errors
from wrenn_server.controlplane.ids import (
    Kind,
    format_id,
    hash_secret,
    is_api_key_format,
    key_prefix,
    new_api_key,
    parse_id,
)
from wrenn_server.controlplane.services.multipart import PartData, PartEnd, PartStart, boundary_of, read_parts
from wrenn_server.controlplane.settings import ControlPlaneSettings


@given(st.uuids(), st.sampled_from(list(Kind)))
def test_id_round_trip(value: uuid.UUID, kind: Kind) -> None:
    wire = format_id(kind, value)
    assert wire.startswith(kind.prefix) and len(wire) == len(kind.prefix) + 25
    assert wire[len(kind.prefix) :] == wire[len(kind.prefix) :].lower()
    assert parse_id(kind, wire) == value


@given(st.text(max_size=40))
def test_parse_never_crashes(text: str) -> None:
    try:
        parse_id(Kind.SANDBOX, text)
    except errors.InvalidRequest as exc:
        assert exc.message == "invalid sandbox ID"


def test_zero_and_max_ids() -> None:
    assert format_id(Kind.TEAM, uuid.UUID(int=0)) == "team-" + "0" * 25
    top = uuid.UUID(int=(1 << 128) - 1)
    assert parse_id(Kind.SANDBOX, format_id(Kind.SANDBOX, top)) == top
    with pytest.raises(errors.InvalidRequest):
        parse_id(Kind.SANDBOX, "cl-" + "z" * 25)  # > 2**128
    with pytest.raises(errors.InvalidRequest, match="invalid host ID"):
        parse_id(Kind.HOST, "cl-" + "0" * 25)


def test_api_keys() -> None:
    key = new_api_key()
    assert is_api_key_format(key) and len(key) == 36
    assert key_prefix(key) == key[:10]
    assert len(hash_secret(key)) == 64 and hash_secret(key) != hash_secret(new_api_key())
    assert not is_api_key_format("wrn_" + "G" * 32)


def test_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "DATABASE_URL",
        "WRENN_DATABASE_URL",
        "WRENN_JWT_SECRET",
        "JWT_SECRET",
        "WRENN_CP_LISTEN_ADDR",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WRENN_DIR", str(tmp_path))
    settings = ControlPlaneSettings()
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path / 'wrenn.db'}"
    assert settings.listen == "127.0.0.1:8080" and settings.max_upload_mb == 100
    secret = settings.resolve_jwt_secret()
    assert len(secret) == 64 and (tmp_path / "jwt-secret").stat().st_mode & 0o777 == 0o600
    assert ControlPlaneSettings().resolve_jwt_secret() == secret

    monkeypatch.setenv("DATABASE_URL", "postgres://u:p@db:5432/wrenn?sslmode=disable")
    monkeypatch.setenv("WRENN_CP_LISTEN_ADDR", "0.0.0.0:9725")
    settings = ControlPlaneSettings()
    assert settings.database_url == "postgresql+asyncpg://u:p@db:5432/wrenn?ssl=disable"
    assert settings.listen == "0.0.0.0:9725" and not settings.is_sqlite
    monkeypatch.setenv("WRENN_DATABASE_URL", "postgresql://x@h/d")
    assert ControlPlaneSettings().database_url == "postgresql+asyncpg://x@h/d"


class _RpcError(grpc.aio.AioRpcError):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


@pytest.mark.parametrize(
    ("code", "status", "name"),
    [
        (grpc.StatusCode.NOT_FOUND, 404, "not_found"),
        (grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_request"),
        (grpc.StatusCode.FAILED_PRECONDITION, 409, "invalid_state"),
        (grpc.StatusCode.ALREADY_EXISTS, 409, "conflict"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 503, "no_hosts_available"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504, "timeout"),
        (grpc.StatusCode.UNAVAILABLE, 503, "host_unavailable"),
        (grpc.StatusCode.UNIMPLEMENTED, 501, "agent_error"),
        (grpc.StatusCode.INTERNAL, 502, "agent_error"),
        (grpc.StatusCode.UNKNOWN, 502, "agent_error"),
    ],
)
def test_rpc_error_mapping(code: grpc.StatusCode, status: int, name: str) -> None:
    mapped = errors.from_rpc_error(_RpcError(code, "agent says no"))
    assert (mapped.status, mapped.code, mapped.message) == (status, name, "agent says no")


BOUNDARY = b"XyZ123"
BODY = (
    b'--XyZ123\r\nContent-Disposition: form-data; name="path"\r\n\r\n/tmp/a b.txt\r\n'
    b'--XyZ123\r\nContent-Disposition: form-data; name="file"; filename="upload.bin"\r\n'
    b"Content-Type: application/octet-stream\r\n\r\n" + bytes(range(256)) * 40 + b"\r\n--XyZ123--\r\n"
)


async def _collect(chunks: list[bytes]) -> list[Any]:
    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    return [event async for event in read_parts(body(), BOUNDARY)]


@given(st.lists(st.integers(min_value=1, max_value=len(BODY)), max_size=30))
async def test_multipart_any_chunking(cuts: list[int]) -> None:
    points = sorted({0, len(BODY), *cuts})
    events = await _collect([BODY[a:b] for a, b in zip(points, points[1:], strict=False)])
    starts = [e for e in events if isinstance(e, PartStart)]
    assert [(s.name, s.filename) for s in starts] == [("path", None), ("file", "upload.bin")]
    assert sum(isinstance(e, PartEnd) for e in events) == 2
    index = events.index(starts[1])
    data = b"".join(e.data for e in events[index:] if isinstance(e, PartData))
    assert data == bytes(range(256)) * 40


async def test_multipart_truncated_and_bad() -> None:
    with pytest.raises(errors.InvalidRequest, match="truncated"):
        await _collect([BODY[:-20]])
    with pytest.raises(errors.InvalidRequest):
        boundary_of("application/json")
    with pytest.raises(errors.InvalidRequest):
        boundary_of(None)
    assert boundary_of("multipart/form-data; boundary=abc") == b"abc"
