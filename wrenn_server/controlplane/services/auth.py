"""Who is calling: API keys (sha256 lookup) and HS256 JWTs for users and hosts."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import jwt
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.models import Team, TeamApiKey, User, UserTeam
from ..db.types import utcnow
from ..errors import Forbidden, Unauthorized, WrennError
from ..ids import Kind, format_id, hash_secret, parse_id

USER_JWT_TTL = timedelta(hours=6)
HOST_JWT_TTL = timedelta(days=7)
ADMIN_TEAM_SLUG = "admin"
_LAST_USED_EVERY = timedelta(minutes=1)


@dataclass(frozen=True)
class Principal:
    """The authenticated caller; every capsule query is scoped by `team_id`."""

    team_id: uuid.UUID
    kind: Literal["api_key", "user"]
    actor_id: uuid.UUID
    is_admin: bool = False


class KeyCache:
    """Recently verified API keys, so the hot path (exec, files) skips a query per request.

    A key deleted through this process is forgotten at once; elsewhere it stops working within `ttl`.
    """

    def __init__(self, ttl: float = 10.0) -> None:
        self._ttl = ttl
        self._entries: dict[str, tuple[Principal, float]] = {}

    def get(self, key_hash: str) -> Principal | None:
        entry = self._entries.get(key_hash)
        if entry is None or entry[1] < time.monotonic():
            self._entries.pop(key_hash, None)
            return None
        return entry[0]

    def put(self, key_hash: str, principal: Principal) -> None:
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[key_hash] = (principal, time.monotonic() + self._ttl)

    def forget_team(self, team_id: uuid.UUID) -> None:
        self._entries = {k: v for k, v in self._entries.items() if v[0].team_id != team_id}

    def clear(self) -> None:
        self._entries.clear()


async def principal_from_api_key(session: AsyncSession, plaintext: str) -> Principal:
    row = (
        await session.execute(
            select(TeamApiKey, Team)
            .join(Team, Team.id == TeamApiKey.team_id)
            .where(TeamApiKey.key_hash == hash_secret(plaintext), Team.deleted_at.is_(None))
        )
    ).first()
    if row is None:
        raise Unauthorized("invalid API key")
    key, team = row
    now = utcnow()
    if key.last_used is None or now - key.last_used >= _LAST_USED_EVERY:
        await session.execute(update(TeamApiKey).where(TeamApiKey.id == key.id).values(last_used=now))
        await session.commit()
    return Principal(team_id=team.id, kind="api_key", actor_id=key.id, is_admin=team.slug == ADMIN_TEAM_SLUG)


def _decode(secret: str, token: str) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(
            token, secret, algorithms=["HS256"], options={"require": ["exp", "iat"]}
        )
    except jwt.PyJWTError as exc:
        raise Unauthorized("invalid or expired token") from exc
    return claims


async def principal_from_user_jwt(session: AsyncSession, secret: str, token: str) -> Principal:
    claims = _decode(secret, token)
    if claims.get("typ") not in (None, "user"):
        raise Unauthorized("invalid or expired token")
    try:
        user_id = parse_id(Kind.USER, str(claims.get("sub", "")))
        team_id = parse_id(Kind.TEAM, str(claims.get("team_id", "")))
    except WrennError as exc:
        raise Unauthorized("invalid or expired token") from exc
    user = await session.get(User, user_id)
    if user is None or user.deleted_at is not None:
        raise Unauthorized("invalid or expired token")
    if user.status != "active":
        raise Forbidden("account is deactivated")
    if await session.get(UserTeam, (team_id, user_id)) is None:
        raise Forbidden("not a member of this team")
    return Principal(team_id=team_id, kind="user", actor_id=user_id, is_admin=user.is_admin)


def issue_user_jwt(secret: str, user: User, team_id: uuid.UUID, role: str) -> str:
    now = utcnow()
    claims = {
        "sub": format_id(Kind.USER, user.id),
        "team_id": format_id(Kind.TEAM, team_id),
        "role": role,
        "email": user.email,
        "name": user.name,
        "is_admin": user.is_admin,
        "iat": int(now.timestamp()),
        "exp": int((now + USER_JWT_TTL).timestamp()),
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def issue_host_jwt(secret: str, host_id: uuid.UUID) -> str:
    now = utcnow()
    claims = {
        "typ": "host",
        "host_id": format_id(Kind.HOST, host_id),
        "iat": int(now.timestamp()),
        "exp": int((now + HOST_JWT_TTL).timestamp()),
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def host_id_from_jwt(secret: str, token: str) -> uuid.UUID:
    claims = _decode(secret, token)
    if claims.get("typ") != "host":
        raise Unauthorized("invalid or expired host token")
    try:
        return parse_id(Kind.HOST, str(claims.get("host_id", "")))
    except WrennError as exc:
        raise Unauthorized("invalid or expired host token") from exc
