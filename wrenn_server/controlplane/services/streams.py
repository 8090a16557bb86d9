"""Processes followed as they run: exec streams, attaching to a running process, terminal input and size.

A stream only watches a process. envd keeps every process until it exits (and its last MiB of output), so
a dropped socket, a lost RPC or an expired deadline never ends a background process or a terminal; whoever
attaches next gets the kept output replayed first.
"""

from __future__ import annotations

import codecs
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from wrenn_server.proto._generated import hostagent_pb2 as pb
from wrenn_server.proto.limits import MAX_INT32

from ..errors import AgentError, InvalidRequest
from ..ids import Kind, format_id
from ..schemas.streams import DEFAULT_COLS, DEFAULT_ROWS, DEFAULT_SHELL, PtyStart
from .agents import AgentClient, AgentPool
from .auth import Principal
from .capsules import CapsuleService


@dataclass(frozen=True)
class Started:
    pid: int
    tag: str


@dataclass(frozen=True)
class Output:
    kind: str  # stdout | stderr | pty
    data: bytes


@dataclass(frozen=True)
class Exited:
    exit_code: int


Event = Started | Output | Exited


def _event(message: pb.ProcessEvent) -> Event:
    kind = message.WhichOneof("event")
    if kind == "start":
        return Started(message.start.pid, message.start.tag)
    if kind == "end":
        return Exited(message.end.exit_code)
    if kind in ("stdout", "stderr", "pty"):
        return Output(kind, getattr(message, kind))
    raise AgentError(f"the host agent sent an unknown process event: {kind}")


class TextDecoder:
    """Output bytes as UTF-8 text, one decoder per stream so a character split across chunks survives."""

    def __init__(self) -> None:
        self._decoders: dict[str, codecs.IncrementalDecoder] = {}

    def decode(self, kind: str, data: bytes, final: bool = False) -> str:
        decoder = self._decoders.get(kind)
        if decoder is None:
            decoder = self._decoders[kind] = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return decoder.decode(data, final)

    def flush(self) -> list[tuple[str, str]]:
        """What is left in each stream (an incomplete character becomes U+FFFD)."""
        rest = [(kind, decoder.decode(b"", True)) for kind, decoder in self._decoders.items()]
        return [(kind, text) for kind, text in rest if text]


def process_selector(text: str) -> tuple[int, str]:
    """A process selector from a path: a numeric pid, else a tag. Answers (pid, tag)."""
    if not text:
        raise InvalidRequest("invalid process selector")
    if text.isascii() and text.isdigit():
        if not 0 < int(text) <= MAX_INT32:
            raise InvalidRequest("invalid process selector")
        return int(text), ""
    return 0, text


@dataclass(frozen=True)
class Target:
    """The processes of one running capsule, reached through its host agent."""

    sandbox_id: uuid.UUID
    wire_id: str
    agent: AgentClient

    def ref(self, pid: int = 0, tag: str = "") -> pb.ProcessRef:
        return pb.ProcessRef(sandbox_id=self.wire_id, pid=pid, tag=tag)

    async def _events(self, messages: AsyncGenerator[pb.ProcessEvent, None]) -> AsyncGenerator[Event, None]:
        try:
            async for message in messages:
                yield _event(message)
        finally:
            await messages.aclose()

    def exec(self, cmd: str, args: list[str]) -> AsyncGenerator[Event, None]:
        """Start `cmd` and follow it; it keeps running if the stream ends first (see `kill`)."""
        request = pb.ExecRequest(sandbox_id=self.wire_id, cmd=cmd, args=args)
        return self._events(self.agent.exec_stream(request))

    def attach(self, pid: int = 0, tag: str = "") -> AsyncGenerator[Event, None]:
        """Follow a process: `Started`, the replay of its kept output, live output, then `Exited`."""
        return self._events(self.agent.connect_process(self.ref(pid, tag)))

    async def start_pty(self, start: PtyStart, tag: str) -> int:
        """Start a terminal program in the background under `tag` (empty fields take the defaults); answers its pid."""
        request = pb.ExecRequest(
            sandbox_id=self.wire_id,
            cmd=start.cmd or DEFAULT_SHELL,
            args=start.args or [],
            envs=start.envs or {},
            cwd=start.cwd or "",
            user=start.user or "",
            tag=tag,
            stdin=True,
            pty=pb.PtySize(cols=start.cols or DEFAULT_COLS, rows=start.rows or DEFAULT_ROWS),
        )
        return (await self.agent.start_background(request)).pid

    async def send_input(self, tag: str, data: bytes) -> None:
        await self.agent.send_input(pb.SendInputRequest(process=self.ref(tag=tag), data=data))

    async def resize(self, tag: str, cols: int, rows: int) -> None:
        await self.agent.resize_pty(pb.ResizeRequest(process=self.ref(tag=tag), cols=cols, rows=rows))

    async def kill(self, pid: int = 0, tag: str = "") -> None:
        await self.agent.kill_process(pb.KillProcessRequest(process=self.ref(pid, tag), signal="SIGKILL"))


class StreamService:
    def __init__(self, capsules: CapsuleService, pool: AgentPool) -> None:
        self._capsules = capsules
        self._pool = pool

    async def target(self, principal: Principal, sandbox_id: uuid.UUID) -> Target:
        """The capsule's processes, or 404 / 409 `invalid_state` unless it is the caller's and running."""
        row, host = await self._capsules.running(principal, sandbox_id)
        self._capsules.touch(row.id)
        return Target(row.id, format_id(Kind.SANDBOX, row.id), self._pool.client(host))

    def touch(self, target: Target) -> None:
        self._capsules.touch(target.sandbox_id)
