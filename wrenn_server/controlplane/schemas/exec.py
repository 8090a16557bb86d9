"""Run a command in a capsule: the request, and its foreground (200) and background (202) answers."""

from __future__ import annotations

from pydantic import BaseModel, Field

from wrenn_server.proto.limits import MAX_INT32

from .common import Request

DEFAULT_TIMEOUT_SEC = 30.0

class ExecRequest(Request):
    cmd: str = Field(min_length=1, description="Program to run, e.g. `/bin/sh`.")
    args: list[str] = Field(default_factory=list)
    timeout_sec: float | None = Field(
        None,
        ge=0,
        le=MAX_INT32,
        description=f"Foreground limit in seconds (default {DEFAULT_TIMEOUT_SEC:g}, 0 = none).",
    )
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

