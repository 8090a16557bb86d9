"""Client of the envd wire protocol (wrenn_server/proto/envd.py, docs/envd-protocol.md), over kept-alive
connections to one capsule. Requests and answers are the contract's messages; an answer that does not follow
it, or an envd that speaks another protocol version, is an error here rather than a surprise later."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from typing import TypeVar
from urllib.parse import quote

from wrenn_server.proto.envd import (
    PORT,
    PROTOCOL_VERSION,
    EndEvent,
    EntryAnswer,
    EntryInfo,
    EntryList,
    ErrorBody,
    ErrorCode,
    Hello,
    InitRequest,
    InputRequest,
    KeepAlive,
    ListRequest,
    Message,
    MessageError,
    Mode,
    OutputEvent,
    PathRequest,
    ProcessEntry,
    ProcessList,
    ProcessRef,
    ResizeRequest,
    RunResult,
    SignalRequest,
    Started,
    StartEvent,
    StartRequest,
    parse_event,
)

from .errors import (
    AgentError,
    CommandTimeout,
    Conflict,
    Forbidden,
    InvalidArgument,
    NotFound,
    TooLarge,
    Unreachable,
    WrongState,
)
from .http1 import Client, ConnectionFailed

M = TypeVar("M", bound=Message)
ProcessEvent = StartEvent | OutputEvent | EndEvent
# Every error envd answers (envd/errors.py) has its host-agent twin, which the control plane turns into the
# same contract error (docs/agent-rpc.md, "Errors"). Known by code; an answer without one by its HTTP status.
_ERRORS: dict[str, type[AgentError]] = {
    ErrorCode.INVALID_REQUEST: InvalidArgument,
    ErrorCode.FORBIDDEN: Forbidden,
    ErrorCode.NOT_FOUND: NotFound,
    ErrorCode.CONFLICT: Conflict,
    ErrorCode.TOO_LARGE: TooLarge,
    ErrorCode.TIMEOUT: CommandTimeout,
}
_BY_STATUS: dict[int, type[AgentError]] = {
    400: InvalidArgument,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    504: CommandTimeout,
}


def _error(status: int, body: bytes) -> AgentError:
    try:
        error = ErrorBody.decode(body)
    except MessageError:  # no code (an older envd, or not envd at all): known by its status
        try:
            message = str(json.loads(body).get("message", ""))
        except (ValueError, AttributeError):
            message = body.decode(errors="replace")[:500]
        return _BY_STATUS.get(status, AgentError)(message or f"envd answered {status}")
    kind = _ERRORS.get(error.code) or _BY_STATUS.get(status, AgentError)
    return kind(error.message or f"envd answered {status}")


def _read(kind: type[M], content: bytes) -> M:
    try:
        return kind.decode(content)
    except MessageError as exc:
        raise AgentError(f"envd answered outside its protocol: {exc}") from exc


class EnvdClient:
    def __init__(self, address: str, port: int = PORT) -> None:
        self.address = address
        self._http = Client(address, port)
        self.hello: Hello | None = None  # what envd said of itself on the last handshake (/init, /snapshot/resume)
        self.ended = ""  # why the capsule's guest ended (its calls fail at once, saying so)

    async def close(self) -> None:
        await self._http.close()

    def end(self, reason: str) -> None:
        """The guest ended: the calls under way fail now, and later ones at once, with `reason`."""
        self.ended = reason
        self._http.abort()

    def _unreachable(self, exc: ConnectionFailed) -> AgentError:
        if self.ended:
            return WrongState(f"the capsule ended: {self.ended}")
        return Unreachable(f"capsule agent is not answering: {exc}")

    def _check_alive(self) -> None:
        if self.ended:
            raise WrongState(f"the capsule ended: {self.ended}")

    async def _call(
        self,
        method: str,
        path: str,
        body: Message | None = None,
        *,
        timeout: float | None = 30.0,
        ready_by: float = 0.0,
    ) -> bytes:
        """One request, answering the body of a 2xx; with `ready_by` (a monotonic deadline) a guest still
        starting is retried until then, which spares a separate /health round trip (a slow one under
        emulation). Only for idempotent calls."""
        self._check_alive()
        payload = None if body is None else body.encode()
        while True:
            try:
                status, content = await self._http.request(
                    method, path, payload, timeout=min(timeout or 30.0, 1.0) if ready_by else timeout
                )
                break
            except ConnectionFailed as exc:
                if time.monotonic() >= ready_by or self.ended:
                    raise self._unreachable(exc) from exc
            await asyncio.sleep(0.002)
        if status >= 400:
            raise _error(status, content)
        return content

    async def _handshake(self, path: str, body: Message | None, ready_by: float) -> Hello:
        """A call whose answer says who envd is; one that speaks another protocol fails it. envd from before
        the versioned protocol answered these calls with no body at all: protocol 0."""
        content = await self._call("POST", path, body, ready_by=ready_by)
        # Its /health said its version (and no protocol: 0), which the error below is clearer for.
        hello = _read(Hello, content) if content.strip() else await self.health()
        self.hello = hello
        if not hello.compatible:
            raise WrongState(
                f"the capsule runs envd {hello.version}, which speaks envd protocol {hello.protocol}, and this host "
                f"agent speaks protocol {PROTOCOL_VERSION}: recreate the capsule from a current template (a "
                "snapshot template keeps the envd of the image it was made from)"
            )
        return hello

    async def wait_ready(self, deadline: float) -> None:
        """Poll /health until envd answers or the monotonic deadline passes."""
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                status, _ = await self._http.request("GET", "/health", timeout=1.0)
                if status == 200:
                    return
            except ConnectionFailed as exc:
                last = str(exc)
            await asyncio.sleep(0.002)
        raise Unreachable(f"capsule agent did not come up in time ({last})")

    async def prepare_checkpoint(self) -> None:
        """envd stops forwarding ports and resets its other connections; `reset` then drops ours."""
        await self._call("POST", "/snapshot/prepare")

    async def forward_again(self, ready_by: float = 0.0) -> Hello:
        """Port forwarding on again (after a restore, or a checkpoint that did not happen); checks the protocol,
        as a capsule paused under an older host agent may run an envd this one cannot speak to."""
        return await self._handshake("/snapshot/resume", None, ready_by)

    def reset(self) -> None:
        self._http.reset()

    async def health(self) -> Hello:
        return _read(Hello, await self._call("GET", "/health", timeout=5.0))

    async def init(self, default_user: str, env: dict[str, str], sandbox_id: str, ready_by: float = 0.0) -> Hello:
        """The capsule's defaults; the first call to a new guest, so it checks the protocol too."""
        body = InitRequest(default_user=default_user or None, env_vars=env, sandbox_id=sandbox_id)
        return await self._handshake("/init", body, ready_by)

    async def run(self, req: StartRequest) -> RunResult:
        """Runs the command to its end (`req.mode` is ignored)."""
        # The HTTP deadline outlives the command's own limit: envd answers 504 itself when that expires.
        http_timeout = None if req.timeout_sec <= 0 else req.timeout_sec + 10
        body = dataclasses.replace(req, mode=Mode.RUN)
        return _read(RunResult, await self._call("POST", "/process/start", body, timeout=http_timeout))

    async def start_background(self, req: StartRequest) -> Started:
        body = dataclasses.replace(req, mode=Mode.BACKGROUND)
        return _read(Started, await self._call("POST", "/process/start", body))

    async def stream(self, req: StartRequest | ProcessRef) -> AsyncIterator[ProcessEvent]:
        """The events of a process: one started now (a StartRequest), or one already running (a ProcessRef)."""
        body: Message
        if isinstance(req, StartRequest):
            path, body = "/process/start", dataclasses.replace(req, mode=Mode.STREAM)
        else:
            path, body = "/process/connect", req
        self._check_alive()
        try:
            async with self._http.stream("POST", path, body.encode()) as resp:
                if resp.status >= 400:
                    raise _error(resp.status, await resp.read())
                async for line in resp.iter_lines():
                    try:
                        event = parse_event(line)
                    except MessageError as exc:
                        raise AgentError(f"envd sent an event outside its protocol: {exc}") from exc
                    if not isinstance(event, KeepAlive):
                        yield event
        except ConnectionFailed as exc:
            raise self._unreachable(exc) from exc

    async def processes(self) -> list[ProcessEntry]:
        return _read(ProcessList, await self._call("GET", "/process/list")).processes

    async def send_input(self, ref: ProcessRef, data: bytes) -> None:
        await self._call("POST", "/process/input", InputRequest(ref.pid, ref.tag, data=data))

    async def close_stdin(self, ref: ProcessRef) -> None:
        await self._call("POST", "/process/close-stdin", ref)

    async def signal(self, ref: ProcessRef, signal: str | int) -> None:
        await self._call("POST", "/process/signal", SignalRequest(ref.pid, ref.tag, signal=signal))

    async def resize(self, ref: ProcessRef, cols: int, rows: int) -> None:
        await self._call("POST", "/process/resize", ResizeRequest(ref.pid, ref.tag, cols=cols, rows=rows))

    async def stat(self, path: str) -> EntryInfo:
        return _read(EntryInfo, await self._call("POST", "/fs/stat", PathRequest(path)))

    async def list_dir(self, path: str, depth: int = 1) -> list[EntryInfo]:
        return _read(EntryList, await self._call("POST", "/fs/list", ListRequest(path, depth))).entries

    async def make_dir(self, path: str) -> EntryInfo:
        return _read(EntryAnswer, await self._call("POST", "/fs/mkdir", PathRequest(path))).entry

    async def remove(self, path: str) -> None:
        await self._call("POST", "/fs/remove", PathRequest(path))

    async def read_file(self, path: str) -> AsyncIterator[bytes]:
        self._check_alive()
        try:
            async with self._http.stream("GET", f"/files?path={quote(path)}") as resp:
                if resp.status >= 400:
                    raise _error(resp.status, await resp.read())
                async for chunk in resp.iter_bytes():
                    yield chunk
        except ConnectionFailed as exc:
            raise self._unreachable(exc) from exc

    async def write_file(self, path: str, chunks: AsyncIterator[bytes]) -> EntryInfo:
        target = f"/files?path={quote(path)}"
        self._check_alive()
        try:
            async with self._http.stream("PUT", target, chunks, content_type="application/octet-stream") as resp:
                content = await resp.read()
        except ConnectionFailed as exc:
            raise self._unreachable(exc) from exc
        if resp.status >= 400:
            raise _error(resp.status, content)
        return _read(EntryInfo, content)
