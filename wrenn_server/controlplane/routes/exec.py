"""Run a command in a capsule: foreground (200, collected output) or background (202, pid + tag)."""

from __future__ import annotations

from fastapi import APIRouter, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ..services.exec import Command
from .deps import CP, Caller, CapsuleId

router = APIRouter(prefix="/v1/capsules", tags=["exec"])


class ExecBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    cmd: str = Field(description="Program to run, e.g. `/bin/sh`.")
    args: list[str] = Field(default_factory=list)
    timeout_sec: float | None = Field(None, description="Foreground limit in seconds (default 30, 0 = none).")
    background: bool = False
    tag: str | None = Field(None, description="Background process tag (default `proc-<8hex>`).")
    envs: dict[str, str] | None = None
    cwd: str | None = None


class ExecResult(BaseModel):
    sandbox_id: str
    cmd: str
    stdout: str
    stderr: str
    exit_code: int
    duration_ms: int
    encoding: str = Field(description="`utf-8`, or `base64` for both streams when either is not UTF-8.")


class BackgroundResult(BaseModel):
    sandbox_id: str
    cmd: str
    pid: int
    tag: str


@router.post(
    "/{id}/exec",
    response_model=ExecResult,
    responses={202: {"model": BackgroundResult, "description": "Background process started."}},
)
async def exec_command(
    principal: Caller, cp: CP, sandbox_id: CapsuleId, body: ExecBody
) -> ExecResult | JSONResponse:
    command = Command(
        cmd=body.cmd,
        args=body.args,
        envs=body.envs or {},
        cwd=body.cwd or "",
        timeout_sec=body.timeout_sec,
        tag=body.tag,
    )
    if body.background:
        started = await cp.exec.start(principal, sandbox_id, command)
        result = BackgroundResult(
            sandbox_id=started.sandbox_id, cmd=started.cmd, pid=started.pid, tag=started.tag
        )
        return JSONResponse(result.model_dump(), status_code=status.HTTP_202_ACCEPTED)
    done = await cp.exec.run(principal, sandbox_id, command)
    return ExecResult(
        sandbox_id=done.sandbox_id,
        cmd=done.cmd,
        stdout=done.stdout,
        stderr=done.stderr,
        exit_code=done.exit_code,
        duration_ms=done.duration_ms,
        encoding=done.encoding,
    )
