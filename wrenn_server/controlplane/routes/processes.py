"""Processes started in a capsule: list, signal."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from pydantic import BaseModel

from .deps import CP, Caller, CapsuleId

router = APIRouter(prefix="/v1/capsules", tags=["processes"])


class ProcessEntry(BaseModel):
    pid: int
    tag: str | None = None
    cmd: str
    args: list[str] | None = None


class ProcessList(BaseModel):
    processes: list[ProcessEntry]


@router.get("/{id}/processes", response_model_exclude_none=True)
async def list_processes(principal: Caller, cp: CP, sandbox_id: CapsuleId) -> ProcessList:
    infos = await cp.exec.processes(principal, sandbox_id)
    return ProcessList(
        processes=[
            ProcessEntry(pid=p.pid, tag=p.tag or None, cmd=p.cmd, args=list(p.args) or None) for p in infos
        ]
    )


@router.delete("/{id}/processes/{selector}", status_code=status.HTTP_204_NO_CONTENT)
async def kill_process(
    principal: Caller,
    cp: CP,
    sandbox_id: CapsuleId,
    selector: str,
    signal: Annotated[str, Query(description="SIGKILL (default) or SIGTERM.")] = "SIGKILL",
) -> Response:
    await cp.exec.kill(principal, sandbox_id, selector, signal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
