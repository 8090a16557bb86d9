"""Commands and processes inside a running capsule."""

from __future__ import annotations

import base64
import uuid

from wrenn_server.proto._generated import hostagent_pb2 as pb

from ..ids import Kind, format_id, short_tag
from ..schemas.exec import DEFAULT_TIMEOUT_SEC, BackgroundResult, ExecRequest, ExecResult
from ..schemas.processes import ProcessEntry, Signal
from .agents import AgentPool
from .auth import Principal
from .capsules import CapsuleService
from .streams import process_selector


def _decode(stdout: bytes, stderr: bytes) -> tuple[str, str, str]:
    """Both streams as UTF-8 text, or both base64 when either is not valid UTF-8."""
    try:
        return stdout.decode("utf-8"), stderr.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(stdout).decode(), base64.b64encode(stderr).decode(), "base64"


def _request(wire_id: str, command: ExecRequest, timeout: float = 0.0, tag: str = "") -> pb.ExecRequest:
    return pb.ExecRequest(
        sandbox_id=wire_id,
        cmd=command.cmd,
        args=command.args,
        envs=command.envs or {},
        cwd=command.cwd or "",
        tag=tag,
        timeout_sec=timeout,
    )


class ExecService:
    def __init__(self, capsules: CapsuleService, pool: AgentPool) -> None:
        self._capsules = capsules
        self._pool = pool

    async def run(self, principal: Principal, sandbox_id: uuid.UUID, command: ExecRequest) -> ExecResult:
        """Run `command` to its end (or its timeout) and answer what it wrote."""
        timeout = DEFAULT_TIMEOUT_SEC if command.timeout_sec is None else command.timeout_sec
        row, host = await self._capsules.running(principal, sandbox_id)
        wire_id = format_id(Kind.SANDBOX, row.id)
        response = await self._pool.client(host).exec(_request(wire_id, command, timeout=timeout))
        self._capsules.touch(row.id)
        stdout, stderr, encoding = _decode(response.stdout, response.stderr)
        return ExecResult(
            sandbox_id=wire_id,
            cmd=command.cmd,
            stdout=stdout,
            stderr=stderr,
            exit_code=response.exit_code,
            duration_ms=response.duration_ms,
            encoding=encoding,
        )

    async def start(self, principal: Principal, sandbox_id: uuid.UUID, command: ExecRequest) -> BackgroundResult:
        """Start `command` in the background under its tag (default `proc-<8hex>`)."""
        row, host = await self._capsules.running(principal, sandbox_id)
        wire_id = format_id(Kind.SANDBOX, row.id)
        tag = command.tag or short_tag("proc")
        response = await self._pool.client(host).start_background(_request(wire_id, command, tag=tag))
        self._capsules.touch(row.id)
        return BackgroundResult(sandbox_id=wire_id, cmd=command.cmd, pid=response.pid, tag=response.tag or tag)

    async def processes(self, principal: Principal, sandbox_id: uuid.UUID) -> list[ProcessEntry]:
        row, host = await self._capsules.running(principal, sandbox_id)
        response = await self._pool.client(host).list_processes(format_id(Kind.SANDBOX, row.id))
        return [
            ProcessEntry(pid=p.pid, tag=p.tag or None, cmd=p.cmd, args=list(p.args) or None)
            for p in response.processes
        ]

    async def kill(self, principal: Principal, sandbox_id: uuid.UUID, selector: str, signal: Signal) -> None:
        """Send `signal` to the process `selector` names: a numeric pid, else a tag."""
        pid, tag = process_selector(selector)
        row, host = await self._capsules.running(principal, sandbox_id)
        ref = pb.ProcessRef(sandbox_id=format_id(Kind.SANDBOX, row.id), pid=pid, tag=tag)
        await self._pool.client(host).kill_process(pb.KillProcessRequest(process=ref, signal=signal))
