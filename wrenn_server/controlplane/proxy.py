"""The port proxy: `{port}-{capsule id}.{proxy domain}` reaches that port inside the capsule, HTTP and WebSocket.

It runs in front of the API routes (no body limit, no JSON error pages for the capsule's own answers). The
capsule's own address is `host_ip:port`, where the host agent NATs to the guest and envd forwards to services
bound to 127.0.0.1 inside; that address is routed on the capsule's host, which is this machine for `wrenn up`
and for a control plane running beside its agent.

Credentials are optional by default, as in the reference (a capsule ID is unguessable): a request with an
`X-API-Key` or bearer token must belong to the capsule's team, and the credentials never reach the capsule.
`WRENN_PROXY_AUTH=required` refuses requests without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import websockets
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from websockets.asyncio.client import ClientConnection

from .errors import AgentError, HostUnavailable, InvalidRequest, Unauthorized, WrennError, error_body
from .ids import Kind, parse_id
from .services.auth import Principal
from .state import ControlPlane
from .upstream import UpstreamError

log = logging.getLogger(__name__)

HOST = re.compile(r"^(\d+)-(cl-[0-9a-z]+)\.", re.ASCII)
# Headers that belong to one hop (RFC 9110 §7.6.1), and the caller's credentials, which stay here.
_HOP = {
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"x-api-key", b"authorization",
}
_WS_SKIP = _HOP | {
    b"host", b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions", b"sec-websocket-protocol",
    b"content-length",
}
_RESPONSE_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"trailer", b"upgrade"}


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return ""


class PortProxy:
    def __init__(self, app: ASGIApp, required_auth: bool) -> None:
        self.app = app
        self.required_auth = required_auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        match = HOST.match(_header(scope, b"host"))
        if match is None:
            await self.app(scope, receive, send)
            return
        try:
            target = await self._target(scope, match.group(1), match.group(2))
        except WrennError as exc:
            await _refuse(scope, send, exc)
            return
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send, target)
        else:
            await self._http(scope, receive, send, target)

    def _control_plane(self, scope: Scope) -> ControlPlane:
        return scope["app"].state.control_plane  # type: ignore[no-any-return]

    async def _target(self, scope: Scope, port_text: str, wire_id: str) -> _Target:
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise InvalidRequest(f"invalid port {port_text}: use 1-65535")
        sandbox_id = parse_id(Kind.SANDBOX, wire_id)
        cp = self._control_plane(scope)
        principal = await self._caller(cp, scope)
        row, _host = await cp.capsules.running(principal, sandbox_id)
        if not row.host_ip:
            raise HostUnavailable("the sandbox has no address yet")
        return _Target(sandbox_id, wire_id, row.host_ip, port, _header(scope, b"host"))

    async def _caller(self, cp: ControlPlane, scope: Scope) -> Principal | None:
        key = _header(scope, b"x-api-key")
        authorization = _header(scope, b"authorization")
        if key or authorization.lower().startswith("bearer "):
            return await cp.authenticate(key or None, authorization or None)
        if self.required_auth:
            raise Unauthorized("this proxy requires credentials: send X-API-Key or Authorization: Bearer")
        return None

    async def _http(self, scope: Scope, receive: Receive, send: Send, target: _Target) -> None:
        upstream = self._control_plane(scope).upstream
        headers = [(k, v) for k, v in scope["headers"] if k not in _HOP] + _forwarded(scope, target)
        query = scope.get("query_string", b"")
        raw_target = (scope.get("raw_path") or scope["path"].encode()) + (b"?" + query if query else b"")
        # A request without a body must go on without one: streaming "nothing" would send an empty chunked
        # body, which servers that ignore bodies on GET then read as the start of the next request.
        sized = any(k == b"content-length" for k, _ in scope["headers"])
        chunked = not sized and any(k == b"transfer-encoding" for k, _ in scope["headers"])
        body = _body(receive) if sized or chunked else None
        try:
            response = await upstream.request(
                target.address, target.port, scope["method"], raw_target, headers, body, chunked
            )
        except UpstreamError as exc:
            await _refuse(scope, send, _unreachable(target, exc))
            return
        except ClientGone:
            return  # nobody is left to answer
        try:
            out = [(k, v) for k, v in response.headers if k.lower() not in _RESPONSE_HOP]
            out = [(k, _rewrite_location(v, target, scope)) if k.lower() == b"location" else (k, v) for k, v in out]
            await send({"type": "http.response.start", "status": response.status, "headers": out})
            async for chunk in response.body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (UpstreamError, OSError) as exc:
            log.info("proxy to %s:%d ended early: %s", target.wire_id, target.port, exc)
        finally:
            await response.aclose()

    async def _websocket(self, scope: Scope, receive: Receive, send: Send, target: _Target) -> None:
        connect = await receive()
        if connect["type"] != "websocket.connect":
            return
        path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        query = scope.get("query_string", b"").decode("latin-1")
        uri = f"ws://{target.address}:{target.port}{path}" + (f"?{query}" if query else "")
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"] if k not in _WS_SKIP]
        headers += [(k.decode(), v.decode("latin-1")) for k, v in _forwarded(scope, target)]
        try:
            upstream = await websockets.connect(
                uri,
                additional_headers=headers,
                subprotocols=scope.get("subprotocols") or None,
                max_size=None,
                open_timeout=10,
                compression=None,
                user_agent_header=None,
            )
        except (OSError, websockets.WebSocketException, TimeoutError) as exc:
            await _refuse(scope, send, _unreachable(target, exc))
            return
        async with upstream:
            await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})
            await _pump(receive, send, upstream)


class _Target:
    def __init__(self, sandbox_id: uuid.UUID, wire_id: str, address: str, port: int, host: str) -> None:
        self.sandbox_id = sandbox_id
        self.wire_id = wire_id
        self.address = address
        self.port = port
        self.host = host


def _forwarded(scope: Scope, target: _Target) -> list[tuple[bytes, bytes]]:
    client = scope.get("client")
    scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
    out = [(b"x-forwarded-host", target.host.encode()), (b"x-forwarded-proto", scheme.encode())]
    if client:
        out.append((b"x-forwarded-for", str(client[0]).encode()))
    return out


class ClientGone(Exception):
    """The caller went away before its request body was sent on."""


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        body = message.get("body", b"")
        if body:
            yield body
        if not message.get("more_body", False):
            return


def _rewrite_location(value: bytes, target: _Target, scope: Scope) -> bytes:
    """A redirect to the capsule's own address (as the service sees itself) points back through the proxy."""
    text = value.decode("latin-1")
    parts = urlsplit(text)
    if parts.hostname not in ("localhost", "127.0.0.1", "0.0.0.0", target.address):
        return value
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = target.host if port == target.port else re.sub(r"^\d+", str(port), target.host)
    scheme = "https" if scope.get("scheme") == "https" else "http"
    return urlunsplit((scheme, host, parts.path, parts.query, parts.fragment)).encode("latin-1")


def _unreachable(target: _Target, exc: BaseException) -> WrennError:
    reason = str(exc) or type(exc).__name__
    return AgentError(f"nothing answered on port {target.port} in capsule {target.wire_id}: {reason}")


async def _refuse(scope: Scope, send: Send, exc: WrennError) -> None:
    response = JSONResponse(error_body(exc.code, exc.message), status_code=exc.status)
    if scope["type"] == "http":
        await response(scope, _no_body, send)
    elif "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", "status": exc.status, "headers": response.raw_headers})
        await send({"type": "websocket.http.response.body", "body": response.body})
    else:
        await send({"type": "websocket.close", "code": 1011, "reason": exc.message[:120]})


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _pump(receive: Receive, send: Send, upstream: ClientConnection) -> None:
    async def downstream_to_upstream() -> None:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                await upstream.close(message.get("code", 1000))
                return
            data = message.get("bytes")
            await upstream.send(data if data is not None else message.get("text", ""))

    async def upstream_to_downstream() -> None:
        try:
            async for data in upstream:
                if isinstance(data, bytes):
                    await send({"type": "websocket.send", "bytes": data})
                else:
                    await send({"type": "websocket.send", "text": data})
        except websockets.ConnectionClosed:
            pass
        code = upstream.close_code or 1000
        with contextlib.suppress(Exception):
            await send({"type": "websocket.close", "code": code if code != 1005 else 1000})

    tasks = [asyncio.create_task(downstream_to_upstream()), asyncio.create_task(upstream_to_downstream())]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
