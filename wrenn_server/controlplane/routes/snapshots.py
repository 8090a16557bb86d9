"""Snapshot templates (docs/api.md, "Snapshots")."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from ..db.models import Template as TemplateRow
from ..errors import InvalidRequest
from ..ids import ZERO_UUID, Kind, parse_id
from .capsules import rfc3339
from .deps import CP, Caller

router = APIRouter(prefix="/v1/snapshots", tags=["snapshots"])


class SnapshotBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    sandbox_id: str = Field(description="The running capsule to snapshot (`cl-…`).")
    name: str | None = Field(None, description="Template name (default `template-<8hex>`).")


class Template(BaseModel):
    name: str
    type: str = Field(description="`base` or `snapshot`.")
    vcpus: int | None = None
    memory_mb: int | None = None
    size_bytes: int
    created_at: str | None
    platform: bool
    protected: bool
    metadata: dict[str, Any] | None = None

    @classmethod
    def of(cls, row: TemplateRow) -> Template:
        platform = row.team_id == ZERO_UUID
        return cls(
            name=row.name,
            type=row.type,
            vcpus=row.vcpus,
            memory_mb=row.memory_mb,
            size_bytes=row.size_bytes,
            created_at=rfc3339(row.created_at),
            platform=platform,
            protected=platform,
            metadata={k: v for k, v in (row.meta or {}).items() if k != "host_id"} or None,
        )


@router.post("", status_code=status.HTTP_201_CREATED, response_model_exclude_none=True)
async def create_snapshot(
    principal: Caller,
    cp: CP,
    body: SnapshotBody,
    overwrite: Annotated[bool, Query(description="Replace the team's template of that name.")] = False,
) -> Template:
    """A template of the running capsule as it is now: files, memory and processes. The capsule goes on."""
    sandbox_id = parse_id(Kind.SANDBOX, body.sandbox_id)
    return Template.of(await cp.snapshots.create(principal, sandbox_id, body.name, overwrite))


@router.get("", response_model_exclude_none=True)
async def list_snapshots(
    principal: Caller,
    cp: CP,
    type: Annotated[str | None, Query(description="`base` or `snapshot`; both when absent.")] = None,
) -> list[Template]:
    if type not in (None, "", "base", "snapshot"):
        raise InvalidRequest("invalid 'type': use base or snapshot")
    return [Template.of(row) for row in await cp.snapshots.list(principal, type or None)]


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_snapshot(principal: Caller, cp: CP, name: str) -> Response:
    """403 for platform templates; capsules already made from it keep running."""
    await cp.snapshots.delete(principal, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
