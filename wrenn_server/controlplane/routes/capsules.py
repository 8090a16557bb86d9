"""Capsules: create, list, get, destroy, ping (docs/api.md, "Capsules")."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, ConfigDict, Field

from ..db.models import Sandbox
from ..ids import Kind, format_id
from ..services.capsules import CreateSpec
from ..services.status import ENDED_OR_LOST
from .deps import CP, Caller, CapsuleId

router = APIRouter(prefix="/v1/capsules", tags=["capsules"])


def rfc3339(value: datetime | None) -> str | None:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value is not None else None


class CreateCapsule(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    template: str | None = Field(None, description="Template name (default `minimal`).")
    vcpus: int | None = Field(None, description="Virtual CPUs (default 1).")
    memory_mb: int | None = Field(None, description="Memory in MiB (default 512).")
    timeout_sec: int | None = Field(None, description="Inactivity TTL; 0 = never, 1–59 become 60.")
    disk_size_mb: int | None = Field(None, description="Disk size in MiB (default 5120).")
    metadata: dict[str, str] | None = Field(None, description="User labels (≤20 keys).")


class Capsule(BaseModel):
    id: str
    status: str
    template: str
    vcpus: int
    memory_mb: int
    timeout_sec: int
    disk_size_mb: int
    disk_used_mb: int | None = None
    host_ip: str | None = None
    created_at: str
    started_at: str | None = None
    last_active_at: str | None = None
    last_updated: str
    metadata: dict[str, str]

    @classmethod
    def of(cls, row: Sandbox) -> Capsule:
        return cls(
            id=format_id(Kind.SANDBOX, row.id),
            status=row.status,
            template=row.template,
            vcpus=row.vcpus,
            memory_mb=row.memory_mb,
            timeout_sec=row.timeout_sec,
            disk_size_mb=row.disk_size_mb,
            host_ip=row.host_ip or None,
            created_at=rfc3339(row.created_at) or "",
            started_at=rfc3339(row.started_at),
            last_active_at=rfc3339(row.last_active_at),
            last_updated=rfc3339(row.last_updated) or "",
            metadata=_metadata(row),
        )


def _metadata(row: Sandbox) -> dict[str, str]:
    """The capsule's labels; for one that ended or was lost, `end_reason` says why (docs/lifecycle.md)."""
    metadata = {str(k): str(v) for k, v in (row.meta or {}).items()}
    if row.error and row.status in ENDED_OR_LOST:
        metadata["end_reason"] = row.error
    return metadata


@router.post("", status_code=status.HTTP_201_CREATED, response_model_exclude_none=True)
async def create_capsule(principal: Caller, cp: CP, body: CreateCapsule) -> Capsule:
    spec = CreateSpec(
        template=body.template,
        vcpus=body.vcpus,
        memory_mb=body.memory_mb,
        timeout_sec=body.timeout_sec,
        disk_size_mb=body.disk_size_mb,
        metadata=body.metadata or {},
    )
    return Capsule.of(await cp.capsules.create(principal, spec))


@router.get("", response_model_exclude_none=True)
async def list_capsules(principal: Caller, cp: CP) -> list[Capsule]:
    return [Capsule.of(row) for row in await cp.capsules.list(principal)]


@router.get("/{id}", response_model_exclude_none=True)
async def get_capsule(principal: Caller, cp: CP, sandbox_id: CapsuleId) -> Capsule:
    row, disk_used_mb = await cp.capsules.get_with_disk(principal, sandbox_id)
    return Capsule.of(row).model_copy(update={"disk_used_mb": disk_used_mb})


@router.delete("/{id}", status_code=status.HTTP_204_NO_CONTENT)
async def destroy_capsule(principal: Caller, cp: CP, sandbox_id: CapsuleId) -> Response:
    await cp.capsules.destroy(principal, sandbox_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{id}/pause", response_model_exclude_none=True)
async def pause_capsule(principal: Caller, cp: CP, sandbox_id: CapsuleId) -> Capsule:
    """Freeze the whole capsule (memory, processes, files, address); already paused: answered as it is."""
    return Capsule.of(await cp.capsules.pause(principal, sandbox_id))


@router.post("/{id}/resume", response_model_exclude_none=True)
async def resume_capsule(principal: Caller, cp: CP, sandbox_id: CapsuleId) -> Capsule:
    """Continue a paused capsule where it stopped; already running: answered as it is."""
    return Capsule.of(await cp.capsules.resume(principal, sandbox_id))


@router.post("/{id}/ping", status_code=status.HTTP_204_NO_CONTENT)
async def ping_capsule(principal: Caller, cp: CP, sandbox_id: CapsuleId) -> Response:
    await cp.capsules.ping(principal, sandbox_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
