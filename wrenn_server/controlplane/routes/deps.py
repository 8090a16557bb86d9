"""Dependencies shared by the routes: the control plane, the caller, parsed IDs."""

from __future__ import annotations

import uuid
from typing import Annotated, cast

from fastapi import Depends, Header, Path, Request

from ..errors import Forbidden
from ..ids import Kind, parse_id
from ..services.auth import Principal
from ..state import ControlPlane


# Every dependency is `async def`: FastAPI runs plain `def` ones in a worker thread, two thread hops a request.
async def control_plane(request: Request) -> ControlPlane:
    return cast(ControlPlane, request.app.state.control_plane)


CP = Annotated[ControlPlane, Depends(control_plane)]


async def caller(
    cp: CP,
    x_api_key: Annotated[str | None, Header(description="Team API key (`wrn_…`).")] = None,
    authorization: Annotated[str | None, Header(description="`Bearer <user JWT>`.")] = None,
) -> Principal:
    """`X-API-Key` first, then `Authorization: Bearer <JWT>`; anything else is 401."""
    return await cp.authenticate(x_api_key, authorization)


Caller = Annotated[Principal, Depends(caller)]


async def admin(principal: Caller) -> Principal:
    if not principal.is_admin:
        raise Forbidden("admin access required")
    return principal


Admin = Annotated[Principal, Depends(admin)]


async def capsule_id(id: Annotated[str, Path(description="Capsule ID (`cl-…`).")]) -> uuid.UUID:
    return parse_id(Kind.SANDBOX, id)


CapsuleId = Annotated[uuid.UUID, Depends(capsule_id)]


async def host_id(id: Annotated[str, Path(description="Host ID (`host-…`).")]) -> uuid.UUID:
    return parse_id(Kind.HOST, id)


HostId = Annotated[uuid.UUID, Depends(host_id)]
