"""Client of the envd wire protocol (docs/envd-protocol.md), over kept-alive connections to one capsule."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from .errors import (
    AgentError,
    CommandTimeout,
    Conflict,
    Forbidden,
    InvalidArgument,
    NotFound,
    TooLarge,
    Unreachable,
)
from .http1 import Client, ConnectionFailed

ENVD_PORT = 49983
# Every error envd answers (envd/errors.py) has its host-agent twin, which the control plane turns into the
# same contract error (docs/agent-rpc.md, "Errors"). Known by code; an answer without one by its HTTP status.
_ERRORS: dict[str, type[AgentError]] = {
    "invalid_request": InvalidArgument,
    "forbidden": Forbidden,
    "not_found": NotFound,
    "conflict": Conflict,
    "too_large": TooLarge,
    "timeout": CommandTimeout,
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
        payload = json.loads(body)
        code, message = str(payload.get("code", "")), str(payload.get("message", ""))
    except (ValueError, AttributeError):
        code, message = "", body.decode(errors="replace")[:500]
    kind = _ERRORS.get(code) or _BY_STATUS.get(status, AgentError)
    return kind(message or f"envd answered {status}")


def _unreachable(exc: ConnectionFailed) -> Unreachable:
    return Unreachable(f"capsule agent is not answering: {exc}")


class EnvdClient:
    def __init__(self, address: str) -> None:
        self.address = address
        self._http = Client(address, ENVD_PORT)

    async def close(self) -> None:
        await self._http.close()

    async def _call(
        self, method: str, path: str, body: Any = None, *, timeout: float | None = 30.0, ready_by: float = 0.0
    ) -> Any:
        """One request; with `ready_by` (a monotonic deadline) a guest still starting is retried until then,
        which spares a separate /health round trip (a slow one under emulation). Only for idempotent calls."""
        payload = None if body is None else json.dumps(body).encode()
        while True:
            try:
                status, content = await self._http.request(
                    method, path, payload, timeout=min(timeout or 30.0, 1.0) if ready_by else timeout
                )
                break
            except ConnectionFailed as exc:
                if time.monotonic() >= ready_by:
                    raise _unreachable(exc) from exc
            await asyncio.sleep(0.002)
        if status >= 400:
            raise _error(status, content)
        return json.loads(content) if content else None

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
        await self._call("POST", "/snapshot/prepare", {})

    async def forward_again(self, ready_by: float = 0.0) -> None:
        await self._call("POST", "/snapshot/resume", {}, ready_by=ready_by)

    def reset(self) -> None:
        self._http.reset()

    async def health(self) -> dict[str, Any]:
        return dict(await self._call("GET", "/health", timeout=5.0))

    async def init(self, default_user: str, env: dict[str, str], sandbox_id: str, ready_by: float = 0.0) -> None:
        body: dict[str, Any] = {"envVars": env, "sandboxId": sandbox_id}
        if default_user:
            body["defaultUser"] = default_user
        await self._call("POST", "/init", body, ready_by=ready_by)

    async def run(self, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        # The HTTP deadline outlives the command's own limit: envd answers 504 itself when that expires.
        http_timeout = None if timeout <= 0 else timeout + 10
        out = dict(await self._call("POST", "/process/start", {**body, "mode": "run"}, timeout=http_timeout))
        out["stdout"] = base64.b64decode(out.get("stdout", ""))
        out["stderr"] = base64.b64decode(out.get("stderr", ""))
        return out

    async def start_background(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(await self._call("POST", "/process/start", {**body, "mode": "background"}))

    async def stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Events of a process stream; payload bytes are decoded from base64."""
        try:
            async with self._http.stream("POST", path, json.dumps(body).encode()) as resp:
                if resp.status >= 400:
                    raise _error(resp.status, await resp.read())
                async for line in resp.iter_lines():
                    event = json.loads(line)
                    if event.get("type") == "keepalive":
                        continue
                    if "data" in event:
                        event["data"] = base64.b64decode(event["data"])
                    yield event
        except ConnectionFailed as exc:
            raise _unreachable(exc) from exc

    async def processes(self) -> list[dict[str, Any]]:
        return list((await self._call("GET", "/process/list"))["processes"])

    async def process_call(self, action: str, body: dict[str, Any]) -> None:
        await self._call("POST", f"/process/{action}", body)

    async def fs(self, action: str, body: dict[str, Any]) -> Any:
        return await self._call("POST", f"/fs/{action}", body)

    async def read_file(self, path: str) -> AsyncIterator[bytes]:
        try:
            async with self._http.stream("GET", f"/files?path={quote(path)}") as resp:
                if resp.status >= 400:
                    raise _error(resp.status, await resp.read())
                async for chunk in resp.iter_bytes():
                    yield chunk
        except ConnectionFailed as exc:
            raise _unreachable(exc) from exc

    async def write_file(self, path: str, chunks: AsyncIterator[bytes]) -> dict[str, Any]:
        target = f"/files?path={quote(path)}"
        try:
            async with self._http.stream("PUT", target, chunks, content_type="application/octet-stream") as resp:
                content = await resp.read()
        except ConnectionFailed as exc:
            raise _unreachable(exc) from exc
        if resp.status >= 400:
            raise _error(resp.status, content)
        return dict(json.loads(content))
