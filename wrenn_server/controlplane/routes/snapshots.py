"""Snapshot templates (docs/api.md, "Snapshots")."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response, status

from ..ids import Kind, parse_id
from ..schemas.snapshots import SnapshotBody, Template, TemplateType
from .deps import CP, Caller

router = APIRouter(prefix="/v1/snapshots", tags=["snapshots"])


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
    type: Annotated[TemplateType | Literal[""] | None, Query(description="Both when absent or empty.")] = None,
) -> list[Template]:
    return [Template.of(row) for row in await cp.snapshots.list(principal, type or None)]


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_snapshot(principal: Caller, cp: CP, name: str) -> Response:
    """403 for platform templates; capsules already made from it keep running."""
    await cp.snapshots.delete(principal, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
