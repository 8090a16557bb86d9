"""Host registration tokens, agent registration, heartbeats and credential refresh."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.models import Host, HostRefreshToken, HostToken
from ..db.types import utcnow
from ..errors import Forbidden, InvalidRequest, NotFound, Unauthorized
from ..ids import hash_secret, new_token, new_uuid
from .auth import host_id_from_jwt, issue_host_jwt
from .status import HostStatus

REGISTRATION_TTL = timedelta(hours=1)
REFRESH_TTL = timedelta(days=60)


@dataclass(frozen=True)
class Capacity:
    """What an agent reports about its machine and runtime; `None` keeps the stored value."""

    arch: str | None = None
    cpu_cores: int | None = None
    memory_mb: int | None = None
    disk_gb: int | None = None
    runtime: str | None = None
    capabilities: dict[str, Any] | None = None  # the hosts API's `HostCapabilities`, as JSON


@dataclass(frozen=True)
class Credentials:
    host: Host
    token: str
    refresh_token: str
    rpc_token: str


def _apply(host: Host, capacity: Capacity) -> None:
    for name in ("arch", "cpu_cores", "memory_mb", "disk_gb", "runtime", "capabilities"):
        value = getattr(capacity, name)
        if value is not None:
            if isinstance(value, int) and not 0 <= value < 2**31:
                raise InvalidRequest(f"invalid field '{name}': out of range")
            setattr(host, name, value)


async def create_host(
    session: AsyncSession,
    *,
    type: str = "regular",
    team_id: uuid.UUID | None = None,
    address: str = "",
    created_by: uuid.UUID | None = None,
) -> tuple[Host, str]:
    """A `pending` host and a one-time registration token for it."""
    host = Host(id=new_uuid(), type=type, team_id=team_id, address=address, status=HostStatus.PENDING.value)
    session.add(host)
    await session.flush()
    return host, await issue_registration_token(session, host.id, created_by)


async def issue_registration_token(
    session: AsyncSession, host_id: uuid.UUID, created_by: uuid.UUID | None = None
) -> str:
    plaintext = new_token()
    session.add(
        HostToken(
            id=new_uuid(),
            host_id=host_id,
            token_hash=hash_secret(plaintext),
            created_by=created_by,
            expires_at=utcnow() + REGISTRATION_TTL,
        )
    )
    await session.flush()
    return plaintext


async def _issue(session: AsyncSession, secret: str, host: Host) -> Credentials:
    refresh = new_token()
    session.add(
        HostRefreshToken(
            id=new_uuid(), host_id=host.id, token_hash=hash_secret(refresh), expires_at=utcnow() + REFRESH_TTL
        )
    )
    await session.flush()
    return Credentials(host, issue_host_jwt(secret, host.id), refresh, host.rpc_token)


async def register(
    session: AsyncSession, secret: str, token: str, address: str, capacity: Capacity
) -> Credentials:
    """Redeem a registration token: the host goes `online` with fresh credentials."""
    now = utcnow()
    row = await session.scalar(
        select(HostToken).where(HostToken.token_hash == hash_secret(token)).with_for_update()
    )
    if row is None or row.used_at is not None or row.expires_at <= now:
        raise Unauthorized("invalid or expired registration token")
    host = await session.get(Host, row.host_id)
    if host is None:
        raise Unauthorized("invalid or expired registration token")
    if not address.strip():
        raise InvalidRequest("invalid field 'address': must not be empty")
    row.used_at = now
    _apply(host, capacity)
    host.address = address.strip()
    host.status = HostStatus.ONLINE.value
    host.last_heartbeat_at = now
    host.updated_at = now
    host.rpc_token = secrets.token_hex(32)
    credentials = await _issue(session, secret, host)
    await session.commit()
    return credentials


async def heartbeat(
    session: AsyncSession, secret: str, host_token: str, host_id: uuid.UUID, capacity: Capacity
) -> bool:
    """Record a heartbeat; True when the host came back (it was not `online`)."""
    if host_id_from_jwt(secret, host_token) != host_id:
        raise Forbidden("host token does not match host ID")
    host = await session.get(Host, host_id)
    if host is None:
        raise NotFound("host not found")
    _apply(host, capacity)
    now = utcnow()
    came_back = host.status != HostStatus.ONLINE.value
    if host.status in (HostStatus.UNREACHABLE.value, HostStatus.OFFLINE.value, HostStatus.ONLINE.value):
        host.status = HostStatus.ONLINE.value
    host.last_heartbeat_at = now
    host.updated_at = now
    await session.commit()
    return came_back


async def refresh(session: AsyncSession, secret: str, refresh_token: str) -> Credentials:
    """Rotate a refresh token into a new host JWT and refresh token."""
    now = utcnow()
    row = await session.scalar(
        select(HostRefreshToken)
        .where(HostRefreshToken.token_hash == hash_secret(refresh_token))
        .with_for_update()
    )
    if row is None or row.revoked_at is not None or row.expires_at <= now:
        raise Unauthorized("invalid or expired refresh token")
    host = await session.get(Host, row.host_id)
    if host is None:
        raise NotFound("host not found")
    row.revoked_at = now
    credentials = await _issue(session, secret, host)
    await session.commit()
    return credentials


async def list_hosts(session: AsyncSession) -> list[Host]:
    return list((await session.scalars(select(Host).order_by(Host.created_at))).all())
