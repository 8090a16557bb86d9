"""A small HTTP/1.1 client for envd: kept-alive connections with Nagle off, and nothing else.

Every exec crosses this client, so it is kept lean: a general client (httpx) costs about a millisecond per
request here, more than envd itself spends. A connection is reused only after its response was read to the end;
a request that fails or is cancelled half-way closes its connection, so envd sees the abort (an upload cut short
is then dropped, never committed).
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

Body = bytes | AsyncIterator[bytes] | None


class ConnectionFailed(Exception):
    """The request could not be sent or its answer read (refused, reset, closed, timed out)."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    _conn: _Connection
    _remaining: int | None = None  # bytes left with Content-Length; None when chunked
    _chunked: bool = False
    _done: bool = False
    _buffer: bytes = field(default=b"", repr=False)

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.iter_bytes()])

    async def json(self) -> Any:
        return json.loads(await self.read())

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        reader = self._conn.reader
        try:
            if self._chunked:
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    if size == 0:
                        await reader.readuntil(b"\r\n")
                        break
                    data = await reader.readexactly(size + 2)
                    yield data[:-2]
            else:
                while self._remaining:
                    data = await reader.read(min(self._remaining, 65536))
                    if not data:
                        raise ConnectionFailed("envd closed the connection mid-answer")
                    self._remaining -= len(data)
                    yield data
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            raise ConnectionFailed(f"{exc.__class__.__name__} while reading from envd") from exc
        self._done = True

    async def iter_lines(self) -> AsyncIterator[bytes]:
        pending = b""
        async for chunk in self.iter_bytes():
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line:
                    yield line
        if pending:
            yield pending


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @property
    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


class Client:
    """Requests to one `host:port`, over a small pool of kept-alive connections."""

    def __init__(self, host: str, port: int, max_idle: int = 8) -> None:
        self.host = host
        self.port = port
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        self._max_idle = max_idle

    async def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    def abort(self) -> None:
        """Cut every connection, busy ones too: the requests under way fail at once (`ConnectionFailed`)."""
        for conn in [*self._idle, *self._busy]:
            conn.writer.transport.abort()
        self._idle.clear()
        self._busy.clear()

    def reset(self) -> None:
        """Drop the idle connections with a reset (no FIN, so the peer keeps no TIME_WAIT or half-closed state)."""
        for conn in self._idle:
            sock = conn.writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.writer.transport.abort()
        self._idle.clear()

    async def _connect(self, timeout: float) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            if conn.usable:
                return conn
            conn.close()
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        except (OSError, TimeoutError) as exc:
            raise ConnectionFailed(f"cannot connect to envd: {exc.__class__.__name__}") from exc
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Connection(reader, writer)

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        target: str,
        body: Body = None,
        *,
        content_type: str = "application/json",
        connect_timeout: float = 5.0,
    ) -> AsyncIterator[Response]:
        """Send a request and hand over its response; the body must be consumed inside the block."""
        conn = await self._connect(connect_timeout)
        reusable = False
        self._busy.add(conn)
        try:
            response = await self._exchange(conn, method, target, body, content_type)
            yield response
            reusable = response._done and response.headers.get("connection", "").lower() != "close"
        finally:
            self._busy.discard(conn)
            if reusable and conn.usable and len(self._idle) < self._max_idle:
                self._idle.append(conn)
            else:
                conn.close()

    async def request(
        self, method: str, target: str, body: Body = None, *, timeout: float | None = 30.0
    ) -> tuple[int, bytes]:
        try:
            async with asyncio.timeout(timeout), self.stream(method, target, body) as resp:
                return resp.status, await resp.read()
        except TimeoutError as exc:
            raise ConnectionFailed("envd did not answer in time") from exc

    async def _exchange(self, conn: _Connection, method: str, target: str, body: Body, ctype: str) -> Response:
        head = f"{method} {target} HTTP/1.1\r\nHost: {self.host}\r\n"
        writer = conn.writer
        try:
            if body is None:
                writer.write(f"{head}Content-Length: 0\r\n\r\n".encode())
            elif isinstance(body, bytes):
                writer.write(f"{head}Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            else:
                writer.write(f"{head}Content-Type: {ctype}\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
                async for chunk in body:
                    if chunk:
                        writer.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                        await writer.drain()
                writer.write(b"0\r\n\r\n")
            await writer.drain()
            head_bytes = await conn.reader.readuntil(b"\r\n\r\n")
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise ConnectionFailed(f"{exc.__class__.__name__} talking to envd") from exc
        status_line, _, raw_headers = head_bytes.decode("latin-1").partition("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in raw_headers.split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return Response(status, headers, conn, _chunked=True)
        length = int(headers.get("content-length", "0"))
        return Response(status, headers, conn, _remaining=length, _done=length == 0)
