"""Run a command in a capsule: foreground (200, collected output) or background (202, pid + tag)."""

from __future__ import annotations

from fastapi import APIRouter, status
from fastapi.responses import JSONResponse

from ..schemas.exec import BackgroundResult, ExecRequest, ExecResult
from .deps import CP, Caller, CapsuleId

router = APIRouter(prefix="/v1/capsules", tags=["exec"])


@router.post(
    "/{id}/exec",
    response_model=ExecResult,
    responses={202: {"model": BackgroundResult, "description": "Background process started."}},
)
async def exec_command(
    principal: Caller, cp: CP, sandbox_id: CapsuleId, body: ExecRequest
) -> ExecResult | JSONResponse:
    if body.background:
        started = await cp.exec.start(principal, sandbox_id, body)
        return JSONResponse(started.model_dump(), status_code=status.HTTP_202_ACCEPTED)
    return await cp.exec.run(principal, sandbox_id, body)
