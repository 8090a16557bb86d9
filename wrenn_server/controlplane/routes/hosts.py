"""Host agents: registration, heartbeat, credential refresh, listing (api.md §1.2, §2.3)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Response, status
from pydantic import BaseModel, ConfigDict, Field

from ..db.models import Host as HostRow
from ..errors import Unauthorized
from ..ids import Kind, format_id
from ..services import hosts
from .capsules import rfc3339
from .deps import CP, Admin, HostId

router = APIRouter(prefix="/v1/hosts", tags=["hosts"])


class HostCapabilities(BaseModel):
    """What the host's runtime can do there, as the agent measured it when it started."""

    model_config = ConfigDict(strict=True, extra="ignore")
    pause_with_memory: bool = Field(description="A pause keeps the guest's memory and processes.")
    snapshot: bool = Field(description="A running capsule can be saved as a snapshot template.")
    hardware_acceleration: bool = Field(description="Guests run on hardware virtualisation (KVM really used).")
    disk_size_limit: bool = Field(description="`disk_size_mb` bounds the capsule's disk.")
    checkpoint_keeps_connections: bool = Field(description="Open TCP connections survive a pause to disk.")
    guest_sees_vcpus: bool = Field(description="The capsule is shown exactly the vCPUs it was given.")
    guest_kernel: bool = Field(description="The capsule runs a Linux kernel of its own.")
    memory_file: bool = Field(description="Guest memory is a host file that pauses move rather than copy.")
    layered_files: bool = Field(description="The capsule's files are a directory over its template's, not a disk.")
    restores: list[str] = Field(description="Runtimes whose snapshot templates this host can start capsules of.")


class MachineFacts(BaseModel):
    """What an agent reports about its machine and runtime, at registration and with every heartbeat."""

    model_config = ConfigDict(strict=True, extra="ignore")
    arch: str | None = None
    cpu_cores: int | None = None
    memory_mb: int | None = None
    disk_gb: int | None = None
    runtime: str | None = Field(None, max_length=64, description="The agent's runtime: `gvisor` or `microvm`.")
    capabilities: HostCapabilities | None = None

    def capacity(self) -> hosts.Capacity:
        capabilities = self.capabilities.model_dump() if self.capabilities is not None else None
        return hosts.Capacity(self.arch, self.cpu_cores, self.memory_mb, self.disk_gb, self.runtime, capabilities)


class RegisterBody(MachineFacts):
    token: str = Field(min_length=1, description="One-time registration token.")
    address: str = Field(min_length=1, description="host:port where the control plane reaches the agent.")


class HeartbeatBody(MachineFacts):
    pass


class RefreshBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    refresh_token: str = Field(min_length=1)


class Host(BaseModel):
    id: str
    type: str
    team_id: str | None = None
    provider: str | None = None
    availability_zone: str | None = None
    arch: str | None = None
    cpu_cores: int | None = None
    memory_mb: int | None = None
    disk_gb: int | None = None
    runtime: str | None = Field(None, description="The agent's runtime, as it last reported.")
    capabilities: HostCapabilities | None = Field(None, description="What that runtime can do on this host.")
    address: str | None = None
    status: str
    last_heartbeat_at: str | None = None
    created_by: str | None = None
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, row: HostRow) -> Host:
        return cls(
            id=format_id(Kind.HOST, row.id),
            type=row.type,
            team_id=format_id(Kind.TEAM, row.team_id) if row.team_id else None,
            provider=row.provider or None,
            availability_zone=row.availability_zone or None,
            arch=row.arch or None,
            cpu_cores=row.cpu_cores or None,
            memory_mb=row.memory_mb or None,
            disk_gb=row.disk_gb or None,
            runtime=row.runtime or None,
            capabilities=HostCapabilities.model_validate(row.capabilities) if row.capabilities else None,
            address=row.address or None,
            status=row.status,
            last_heartbeat_at=rfc3339(row.last_heartbeat_at),
            created_by=format_id(Kind.USER, row.created_by) if row.created_by else None,
            created_at=rfc3339(row.created_at) or "",
            updated_at=rfc3339(row.updated_at) or "",
        )


class HostCredentials(BaseModel):
    host: Host
    token: str = Field(description="Host JWT, sent back as `X-Host-Token`.")
    refresh_token: str
    rpc_token: str = Field(description="Secret the control plane sends as `x-wrenn-agent-token` on RPCs.")

    @classmethod
    def of(cls, creds: hosts.Credentials) -> HostCredentials:
        return cls(
            host=Host.of(creds.host),
            token=creds.token,
            refresh_token=creds.refresh_token,
            rpc_token=creds.rpc_token,
        )


@router.post("/register", status_code=status.HTTP_201_CREATED, response_model_exclude_none=True)
async def register_host(cp: CP, body: RegisterBody) -> HostCredentials:
    async with cp.sessionmaker() as session:
        creds = await hosts.register(session, cp.jwt_secret, body.token, body.address, body.capacity())
    cp.reconciler.kick()
    return HostCredentials.of(creds)


@router.post("/auth/refresh", response_model_exclude_none=True)
async def refresh_host_token(cp: CP, body: RefreshBody) -> HostCredentials:
    async with cp.sessionmaker() as session:
        return HostCredentials.of(await hosts.refresh(session, cp.jwt_secret, body.refresh_token))


@router.post("/{id}/heartbeat", status_code=status.HTTP_204_NO_CONTENT)
async def heartbeat(
    cp: CP,
    host_id: HostId,
    x_host_token: Annotated[str | None, Header(description="Host JWT from registration.")] = None,
    body: HeartbeatBody | None = None,
) -> Response:
    if not x_host_token:
        raise Unauthorized("missing X-Host-Token")
    capacity = body.capacity() if body is not None else hosts.Capacity()
    async with cp.sessionmaker() as session:
        came_back = await hosts.heartbeat(session, cp.jwt_secret, x_host_token, host_id, capacity)
    if came_back:
        cp.reconciler.kick()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("", response_model_exclude_none=True)
async def list_hosts(cp: CP, _: Admin) -> list[Host]:
    async with cp.sessionmaker() as session:
        return [Host.of(row) for row in await hosts.list_hosts(session)]
