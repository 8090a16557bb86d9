"""Client of the envd wire protocol (docs/envd-protocol.md), one kept-alive connection pool per capsule."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from .errors import (
    AgentError,
    CommandTimeout,
    Conflict,
    Forbidden,
    InvalidArgument,
    NotFound,
    Unreachable,
)

ENVD_PORT = 49983
_ERRORS: dict[str, type[AgentError]] = {
    "not_found": NotFound,
    "invalid_request": InvalidArgument,
    "conflict": Conflict,
    "timeout": CommandTimeout,
    "forbidden": Forbidden,
}


def _error(status: int, body: bytes) -> AgentError:
    try:
        payload = json.loads(body)
        code, message = payload.get("code", ""), payload.get("message", "")
    except ValueError:
        code, message = "", body.decode(errors="replace")[:500]
    return _ERRORS.get(code, AgentError)(message or f"envd answered {status}")


class EnvdClient:
    def __init__(self, address: str) -> None:
        self.base_url = f"http://{address}:{ENVD_PORT}"
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(30.0, connect=5.0),
            limits=httpx.Limits(max_keepalive_connections=16, keepalive_expiry=60),
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, *, timeout: float | None = 30.0, **kw: Any) -> httpx.Response:
        try:
            resp = await self._http.request(method, path, timeout=timeout, **kw)
        except httpx.TransportError as exc:
            raise Unreachable(f"capsule agent is not answering: {exc.__class__.__name__}") from exc
        if resp.status_code >= 400:
            raise _error(resp.status_code, resp.content)
        return resp

    async def wait_ready(self, deadline: float) -> None:
        """Poll /health until envd answers or the monotonic deadline passes."""
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                resp = await self._http.get("/health", timeout=1.0)
                if resp.status_code == 200:
                    return
            except httpx.TransportError as exc:
                last = exc
            await asyncio.sleep(0.01)
        raise Unreachable(f"capsule agent did not come up in time ({last.__class__.__name__ if last else 'no answer'})")

    async def health(self) -> dict[str, Any]:
        return dict((await self._call("GET", "/health", timeout=5.0)).json())

    async def init(self, default_user: str, env: dict[str, str]) -> None:
        body: dict[str, Any] = {"envVars": env}
        if default_user:
            body["defaultUser"] = default_user
        await self._call("POST", "/init", json=body)

    async def run(self, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        # The HTTP deadline outlives the command's own limit: envd answers 504 itself when that expires.
        http_timeout = None if timeout <= 0 else timeout + 10
        resp = await self._call("POST", "/process/start", json={**body, "mode": "run"}, timeout=http_timeout)
        out = dict(resp.json())
        out["stdout"] = base64.b64decode(out.get("stdout", ""))
        out["stderr"] = base64.b64decode(out.get("stderr", ""))
        return out

    async def start_background(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict((await self._call("POST", "/process/start", json={**body, "mode": "background"})).json())

    async def stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Events of a process stream; payload bytes are decoded from base64."""
        try:
            async with self._http.stream("POST", path, json=body, timeout=httpx.Timeout(None, connect=5.0)) as resp:
                if resp.status_code >= 400:
                    raise _error(resp.status_code, await resp.aread())
                async for line in resp.aiter_lines():
                    if not line:
                        continue
                    event = json.loads(line)
                    if event.get("type") == "keepalive":
                        continue
                    if "data" in event:
                        event["data"] = base64.b64decode(event["data"])
                    yield event
        except httpx.TransportError as exc:
            raise Unreachable(f"lost the stream from the capsule agent: {exc.__class__.__name__}") from exc

    async def processes(self) -> list[dict[str, Any]]:
        return list((await self._call("GET", "/process/list")).json()["processes"])

    async def process_call(self, action: str, body: dict[str, Any]) -> None:
        await self._call("POST", f"/process/{action}", json=body)

    async def fs(self, action: str, body: dict[str, Any]) -> Any:
        resp = await self._call("POST", f"/fs/{action}", json=body)
        return resp.json() if resp.content else None

    async def read_file(self, path: str) -> AsyncIterator[bytes]:
        try:
            async with self._http.stream(
                "GET", "/files", params={"path": path}, timeout=httpx.Timeout(None, connect=5.0)
            ) as resp:
                if resp.status_code >= 400:
                    raise _error(resp.status_code, await resp.aread())
                async for chunk in resp.aiter_bytes(65536):
                    yield chunk
        except httpx.TransportError as exc:
            raise Unreachable(f"lost the download from the capsule agent: {exc.__class__.__name__}") from exc

    async def write_file(self, path: str, chunks: AsyncIterator[bytes]) -> dict[str, Any]:
        resp = await self._call("PUT", "/files", params={"path": path}, content=chunks, timeout=None)
        return dict(resp.json())
