"""Commands and processes inside a running capsule."""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass, field

from wrenn_server.proto._generated import hostagent_pb2 as pb

from ..errors import InvalidRequest
from ..ids import Kind, format_id, short_tag
from .agents import AgentPool
from .auth import Principal
from .capsules import CapsuleService

DEFAULT_TIMEOUT_SEC = 30.0
SIGNALS = ("SIGKILL", "SIGTERM")


@dataclass(frozen=True)
class Command:
    cmd: str
    args: list[str] = field(default_factory=list)
    envs: dict[str, str] = field(default_factory=dict)
    cwd: str = ""
    timeout_sec: float | None = None
    tag: str | None = None


@dataclass(frozen=True)
class ExecResult:
    sandbox_id: str
    cmd: str
    stdout: str
    stderr: str
    exit_code: int
    duration_ms: int
    encoding: str


@dataclass(frozen=True)
class Background:
    sandbox_id: str
    cmd: str
    pid: int
    tag: str


def _decode(stdout: bytes, stderr: bytes) -> tuple[str, str, str]:
    """Both streams as UTF-8 text, or both base64 when either is not valid UTF-8."""
    try:
        return stdout.decode("utf-8"), stderr.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(stdout).decode(), base64.b64encode(stderr).decode(), "base64"


def _request(wire_id: str, command: Command, timeout: float = 0.0, tag: str = "") -> pb.ExecRequest:
    if not command.cmd:
        raise InvalidRequest("invalid field 'cmd': must not be empty")
    return pb.ExecRequest(
        sandbox_id=wire_id,
        cmd=command.cmd,
        args=command.args,
        envs=command.envs,
        cwd=command.cwd,
        tag=tag,
        timeout_sec=timeout,
    )


class ExecService:
    def __init__(self, capsules: CapsuleService, pool: AgentPool) -> None:
        self._capsules = capsules
        self._pool = pool

    async def run(self, principal: Principal, sandbox_id: uuid.UUID, command: Command) -> ExecResult:
        timeout = DEFAULT_TIMEOUT_SEC if command.timeout_sec is None else command.timeout_sec
        if timeout < 0:
            raise InvalidRequest("invalid field 'timeout_sec': must not be negative")
        row, host = await self._capsules.running(principal, sandbox_id)
        wire_id = format_id(Kind.SANDBOX, row.id)
        response = await self._pool.client(host).exec(_request(wire_id, command, timeout=timeout))
        self._capsules.touch(row.id)
        stdout, stderr, encoding = _decode(response.stdout, response.stderr)
        return ExecResult(
            wire_id, command.cmd, stdout, stderr, response.exit_code, response.duration_ms, encoding
        )

    async def start(self, principal: Principal, sandbox_id: uuid.UUID, command: Command) -> Background:
        row, host = await self._capsules.running(principal, sandbox_id)
        wire_id = format_id(Kind.SANDBOX, row.id)
        tag = command.tag or short_tag("proc")
        response = await self._pool.client(host).start_background(_request(wire_id, command, tag=tag))
        self._capsules.touch(row.id)
        return Background(wire_id, command.cmd, response.pid, response.tag or tag)

    async def processes(self, principal: Principal, sandbox_id: uuid.UUID) -> list[pb.ProcessInfo]:
        row, host = await self._capsules.running(principal, sandbox_id)
        response = await self._pool.client(host).list_processes(format_id(Kind.SANDBOX, row.id))
        return list(response.processes)

    async def kill(self, principal: Principal, sandbox_id: uuid.UUID, selector: str, signal: str) -> None:
        if signal not in SIGNALS:
            raise InvalidRequest("invalid signal: must be SIGKILL or SIGTERM")
        if not selector:
            raise InvalidRequest("invalid process selector")
        row, host = await self._capsules.running(principal, sandbox_id)
        wire_id = format_id(Kind.SANDBOX, row.id)
        if selector.isascii() and selector.isdigit():
            if int(selector) >= 2**31:
                raise InvalidRequest("invalid process selector")
            ref = pb.ProcessRef(sandbox_id=wire_id, pid=int(selector))
        else:
            ref = pb.ProcessRef(sandbox_id=wire_id, tag=selector)
        await self._pool.client(host).kill_process(pb.KillProcessRequest(process=ref, signal=signal))
