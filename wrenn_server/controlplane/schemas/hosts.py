"""Host agents (docs/api.md, "Hosts"): registration, heartbeat, credential refresh, the host as listed."""

from __future__ import annotations

from pydantic import BaseModel, Field

from ..db.models import Host as HostRow
from ..ids import Kind, format_id
from .common import Int32, Request, rfc3339


class HostCapabilities(Request):
    """What the host's runtime can do there, as the agent measured it when it started."""

    pause_with_memory: bool = Field(description="A pause keeps the guest's memory and processes.")
    snapshot: bool = Field(description="A running capsule can be saved as a snapshot template.")
    hardware_acceleration: bool = Field(description="Guests run on hardware virtualisation (KVM really used).")
    disk_size_limit: bool = Field(description="`disk_size_mb` bounds the capsule's disk.")
    checkpoint_keeps_connections: bool = Field(description="Open TCP connections survive a pause to disk.")
    guest_sees_vcpus: bool = Field(description="The capsule is shown exactly the vCPUs it was given.")
    guest_kernel: bool = Field(description="The capsule runs a Linux kernel of its own.")
    memory_file: bool = Field(description="Guest memory is a host file that pauses move rather than copy.")
    layered_files: bool = Field(description="The capsule's files are a directory over its template's, not a disk.")
    guest_capabilities_limited: bool = Field(
        False, description="The capsule's root holds a chosen set of Linux capabilities, not all of them."
    )
    restores: list[str] = Field(description="Runtimes whose snapshot templates this host can start capsules of.")


class Capacity(Request):
    """What an agent reports about its machine and runtime; an absent field keeps the stored value."""

    arch: str | None = None
    cpu_cores: Int32 | None = None
    memory_mb: Int32 | None = None
    disk_gb: Int32 | None = None
    runtime: str | None = Field(None, max_length=64, description="The agent's runtime: `gvisor` or `microvm`.")
    capabilities: HostCapabilities | None = None


class RegisterBody(Capacity):
    token: str = Field(min_length=1, description="One-time registration token.")
    address: str = Field(min_length=1, description="host:port where the control plane reaches the agent.")


class RefreshBody(Request):
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
