"""Dependencies shared by the routes: the control plane, the caller, parsed IDs."""

from __future__ import annotations

import uuid
from typing import Annotated, cast

from fastapi import Depends, Header, Path, Request

from ..errors import Forbidden, Unauthorized
from ..ids import Kind, hash_secret, parse_id
from ..services.auth import Principal, principal_from_api_key, principal_from_user_jwt
from ..state import ControlPlane


def control_plane(request: Request) -> ControlPlane:
    return cast(ControlPlane, request.app.state.control_plane)


CP = Annotated[ControlPlane, Depends(control_plane)]


async def caller(
    cp: CP,
    x_api_key: Annotated[str | None, Header(description="Team API key (`wrn_…`).")] = None,
    authorization: Annotated[str | None, Header(description="`Bearer <user JWT>`.")] = None,
) -> Principal:
    """`X-API-Key` first, then `Authorization: Bearer <JWT>`; anything else is 401."""
    if x_api_key:
        key_hash = hash_secret(x_api_key)
        cached = cp.keys.get(key_hash)
        if cached is not None:
            return cached
    async with cp.sessionmaker() as session:
        if x_api_key:
            principal = await principal_from_api_key(session, x_api_key)
            cp.keys.put(key_hash, principal)
            return principal
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return await principal_from_user_jwt(session, cp.jwt_secret, token.strip())
    raise Unauthorized("missing or invalid credentials: send X-API-Key or Authorization: Bearer")


Caller = Annotated[Principal, Depends(caller)]


async def admin(principal: Caller) -> Principal:
    if not principal.is_admin:
        raise Forbidden("admin access required")
    return principal


Admin = Annotated[Principal, Depends(admin)]


def capsule_id(id: Annotated[str, Path(description="Capsule ID (`cl-…`).")]) -> uuid.UUID:
    return parse_id(Kind.SANDBOX, id)


CapsuleId = Annotated[uuid.UUID, Depends(capsule_id)]


def host_id(id: Annotated[str, Path(description="Host ID (`host-…`).")]) -> uuid.UUID:
    return parse_id(Kind.HOST, id)


HostId = Annotated[uuid.UUID, Depends(host_id)]
