"""Host registration tokens, agent registration, heartbeats and credential refresh."""

from __future__ import annotations

import uuid
from datetime import timedelta

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.models import Host, HostRefreshToken, HostToken
from ..db.types import utcnow
from ..errors import Forbidden, InvalidRequest, NotFound, Unauthorized
from ..ids import RPC_SEED, agent_rpc_token, hash_secret, new_rpc_seed, new_token, new_uuid
from ..schemas.hosts import Capacity, HostCredentials, RegisterBody
from ..schemas.hosts import Host as HostView
from .auth import host_id_from_jwt, issue_host_jwt
from .status import HostStatus

REGISTRATION_TTL = timedelta(hours=1)
REFRESH_TTL = timedelta(days=60)


def _apply(host: Host, capacity: Capacity) -> None:
    for name in Capacity.model_fields:
        value = getattr(capacity, name)
        if isinstance(value, BaseModel):  # the capabilities, kept as the JSON the hosts API shows
            value = value.model_dump()
        if value is not None:
            setattr(host, name, value)


def _credentials(host: Host, issued: tuple[str, str], secret: str) -> HostCredentials:
    token, refresh = issued
    rpc_token = agent_rpc_token(secret, host.id, host.rpc_token)
    return HostCredentials(host=HostView.of(host), token=token, refresh_token=refresh, rpc_token=rpc_token)


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


async def _issue(session: AsyncSession, secret: str, host: Host) -> tuple[str, str]:
    """A new host JWT and refresh token."""
    refresh = new_token()
    session.add(
        HostRefreshToken(
            id=new_uuid(), host_id=host.id, token_hash=hash_secret(refresh), expires_at=utcnow() + REFRESH_TTL
        )
    )
    await session.flush()
    return issue_host_jwt(secret, host.id), refresh


async def register(session: AsyncSession, secret: str, body: RegisterBody) -> HostCredentials:
    """Redeem a registration token: the host goes `online` with fresh credentials."""
    now = utcnow()
    row = await session.scalar(
        select(HostToken).where(HostToken.token_hash == hash_secret(body.token)).with_for_update()
    )
    if row is None or row.used_at is not None or row.expires_at <= now:
        raise Unauthorized("invalid or expired registration token")
    host = await session.get(Host, row.host_id)
    if host is None:
        raise Unauthorized("invalid or expired registration token")
    if not body.address.strip():
        raise InvalidRequest("invalid field 'address': must not be empty")
    row.used_at = now
    _apply(host, body)
    host.address = body.address.strip()
    host.status = HostStatus.ONLINE.value
    host.last_heartbeat_at = now
    host.updated_at = now
    host.rpc_token = new_rpc_seed()
    issued = await _issue(session, secret, host)
    await session.commit()
    return _credentials(host, issued, secret)


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


async def refresh(session: AsyncSession, secret: str, refresh_token: str) -> HostCredentials:
    """Rotate a refresh token into a new host JWT and refresh token."""
    now = utcnow()
    row = await session.scalar(
        select(HostRefreshToken).where(HostRefreshToken.token_hash == hash_secret(refresh_token)).with_for_update()
    )
    if row is None or row.revoked_at is not None or row.expires_at <= now:
        raise Unauthorized("invalid or expired refresh token")
    host = await session.get(Host, row.host_id)
    if host is None:
        raise NotFound("host not found")
    row.revoked_at = now
    if not host.rpc_token.startswith(RPC_SEED):  # a token stored whole before seeds: replaced by a derived one
        host.rpc_token = new_rpc_seed()
    issued = await _issue(session, secret, host)
    await session.commit()
    return _credentials(host, issued, secret)


async def list_hosts(session: AsyncSession) -> list[Host]:
    return list((await session.scalars(select(Host).order_by(Host.created_at))).all())
