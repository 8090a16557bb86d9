"""Host agents: registration, heartbeat, credential refresh, listing (docs/api.md, "Hosts"; docs/agent-rpc.md)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Response, status

from ..errors import Unauthorized
from ..schemas.hosts import Capacity, Host, HostCredentials, RefreshBody, RegisterBody
from ..services import hosts
from .deps import CP, Admin, HostId

router = APIRouter(prefix="/v1/hosts", tags=["hosts"])


@router.post("/register", status_code=status.HTTP_201_CREATED, response_model_exclude_none=True)
async def register_host(cp: CP, body: RegisterBody) -> HostCredentials:
    async with cp.sessionmaker() as session:
        creds = await hosts.register(session, cp.jwt_secret, body)
    cp.reconciler.kick()
    return creds


@router.post("/auth/refresh", response_model_exclude_none=True)
async def refresh_host_token(cp: CP, body: RefreshBody) -> HostCredentials:
    async with cp.sessionmaker() as session:
        return await hosts.refresh(session, cp.jwt_secret, body.refresh_token)


@router.post("/{id}/heartbeat", status_code=status.HTTP_204_NO_CONTENT)
async def heartbeat(
    cp: CP,
    host_id: HostId,
    x_host_token: Annotated[str | None, Header(description="Host JWT from registration.")] = None,
    body: Capacity | None = None,
) -> Response:
    if not x_host_token:
        raise Unauthorized("missing X-Host-Token")
    async with cp.sessionmaker() as session:
        came_back = await hosts.heartbeat(session, cp.jwt_secret, x_host_token, host_id, body or Capacity())
    if came_back:
        cp.reconciler.kick()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("", response_model_exclude_none=True)
async def list_hosts(cp: CP, _: Admin) -> list[Host]:
    async with cp.sessionmaker() as session:
        return [Host.of(row) for row in await hosts.list_hosts(session)]
