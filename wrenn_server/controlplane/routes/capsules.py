"""Capsules: create, list, get, destroy, pause, resume, ping (docs/api.md, "Capsules")."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from ..schemas.capsules import Capsule, CreateCapsule
from .deps import CP, Caller, CapsuleId

router = APIRouter(prefix="/v1/capsules", tags=["capsules"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model_exclude_none=True)
async def create_capsule(principal: Caller, cp: CP, body: CreateCapsule) -> Capsule:
    return Capsule.of(await cp.capsules.create(principal, body))


@router.get("", response_model_exclude_none=True)
async def list_capsules(principal: Caller, cp: CP) -> list[Capsule]:
    return [Capsule.of(row) for row in await cp.capsules.list(principal)]


@router.get("/{id}", response_model_exclude_none=True)
async def get_capsule(principal: Caller, cp: CP, sandbox_id: CapsuleId) -> Capsule:
    return Capsule.of(*await cp.capsules.get_with_disk(principal, sandbox_id))


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
