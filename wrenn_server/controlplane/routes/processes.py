"""Processes started in a capsule: list, signal."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from ..schemas.processes import DEFAULT_SIGNAL, SIGNALS, ProcessList, Signal
from .deps import CP, Caller, CapsuleId

router = APIRouter(prefix="/v1/capsules", tags=["processes"])


@router.get("/{id}/processes", response_model_exclude_none=True)
async def list_processes(principal: Caller, cp: CP, sandbox_id: CapsuleId) -> ProcessList:
    return ProcessList(processes=await cp.exec.processes(principal, sandbox_id))


@router.delete("/{id}/processes/{selector}", status_code=status.HTTP_204_NO_CONTENT)
async def kill_process(
    principal: Caller,
    cp: CP,
    sandbox_id: CapsuleId,
    selector: str,
    signal: Annotated[Signal, Query(description=f"One of {', '.join(SIGNALS)}.")] = DEFAULT_SIGNAL,
) -> Response:
    await cp.exec.kill(principal, sandbox_id, selector, signal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
