"""A small HTTP/1.1 server on asyncio streams: keep-alive, Content-Length and chunked request bodies, and
fixed-length or chunked streamed responses. Just enough for the host agent, with no per-request overhead
worth measuring (no Date header, no header objects, one write per small response)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from asyncio import StreamReader, StreamWriter
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from urllib.parse import parse_qsl, urlsplit

log = logging.getLogger("envd")

MAX_HEAD = 64 * 1024
READ_SIZE = 64 * 1024
_REASONS = {
    200: "OK", 204: "No Content", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 409: "Conflict",
    413: "Content Too Large", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
    504: "Gateway Timeout",
}


class ProtocolError(Exception):
    """The peer broke HTTP framing; the connection cannot be reused."""


class StreamAborted(Exception):
    """Raised by a response stream to drop the connection without ending the body cleanly."""


class BodyTooLarge(Exception):
    """`Body.read_all` met more bytes than its limit."""


class Body:
    """The request body, read lazily so uploads stream to disk instead of memory."""

    def __init__(self, reader: StreamReader, length: int, chunked: bool) -> None:
        self._reader = reader
        self._left = length  # bytes left in the body (or in the current chunk when chunked)
        self._chunked = chunked
        self.done = not chunked and length == 0

    async def read_chunk(self) -> bytes:
        """The next piece of the body; b"" once it is over."""
        if self.done:
            return b""
        if self._chunked and self._left == 0:
            self._left = await self._next_chunk_size()
            if self._left == 0:
                self.done = True
                return b""
        data = await self._reader.read(min(self._left, READ_SIZE))
        if not data:
            raise ProtocolError("connection closed inside the request body")
        self._left -= len(data)
        if self._left == 0 and self._chunked:
            await self._reader.readexactly(2)
        elif self._left == 0:
            self.done = True
        return data

    async def _next_chunk_size(self) -> int:
        line = await self._reader.readuntil(b"\r\n")
        try:
            size = int(line.split(b";", 1)[0], 16)
        except ValueError as exc:
            raise ProtocolError("bad chunk size") from exc
        if size == 0:
            while await self._reader.readuntil(b"\r\n") != b"\r\n":  # trailers: ignored
                pass
        return size

    async def read_all(self, limit: int) -> bytes:
        parts = []
        size = 0
        while chunk := await self.read_chunk():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"request body is over {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Body
    abort: Callable[[], None]  # drops the connection at once, e.g. when a stream's client falls behind


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    # When set, the body is streamed: with Content-Length if `length` is known, chunked otherwise. A stream
    # yields b"" while idle so the server can notice a client that went away.
    stream: AsyncGenerator[bytes, None] | None = None
    length: int | None = None


Handler = Callable[[Request], Awaitable[Response]]


def json_response(obj: object, status: int = 200) -> Response:
    return Response(status, json.dumps(obj, separators=(",", ":")).encode())


def _parse_head(head: bytes, reader: StreamReader, writer: StreamWriter) -> tuple[Request, bool]:
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ")
    except ValueError as exc:
        raise ProtocolError("bad request line") from exc
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, sep, value = line.partition(":")
            if not sep:
                raise ProtocolError("bad header line")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    conn = headers.get("connection", "").lower()
    keep_alive = "close" not in conn if version == "HTTP/1.1" else "keep-alive" in conn
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    try:
        length = 0 if chunked else int(headers.get("content-length", "0"))
    except ValueError as exc:
        raise ProtocolError("bad content-length") from exc
    url = urlsplit(target)
    query = dict(parse_qsl(url.query, keep_blank_values=True))
    body = Body(reader, length, chunked)
    return Request(method, url.path, query, headers, body, writer.transport.abort), keep_alive


def _head(status: int, content_type: str, framing: str, keep: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}"]
    if status != 204:
        lines += [f"Content-Type: {content_type}", framing]
    if not keep:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _write(resp: Response, reader: StreamReader, writer: StreamWriter, keep: bool) -> None:
    if resp.stream is None:
        framing = f"Content-Length: {len(resp.body)}"
        writer.write(_head(resp.status, resp.content_type, framing, keep) + resp.body)
        await writer.drain()
        return
    chunked = resp.length is None
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {resp.length}"
    writer.write(_head(resp.status, resp.content_type, framing, keep))
    try:
        async for piece in resp.stream:
            if not piece:
                if reader.at_eof():
                    raise ConnectionResetError("client went away")
                continue
            writer.write(b"%x\r\n%b\r\n" % (len(piece), piece) if chunked else piece)
            await writer.drain()
        if chunked:
            writer.write(b"0\r\n\r\n")
        await writer.drain()
    finally:
        await resp.stream.aclose()


_connections: set[StreamWriter] = set()


def abort_connections(keep: Request) -> None:
    """Reset every client connection but the one `keep` arrived on (before a checkpoint: no socket may be open)."""
    for writer in list(_connections):
        if writer.transport.abort != keep.abort:
            writer.transport.abort()


async def _serve(handler: Handler, reader: StreamReader, writer: StreamWriter) -> None:
    _connections.add(writer)
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    clean = False
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                writer.write(_head(431, "text/plain", "Content-Length: 0", False))
                break
            request, keep = _parse_head(head, reader, writer)
            response = await handler(request)
            if not request.body.done:
                # Read what the client still sends, so it sees our answer instead of a reset.
                while await request.body.read_chunk():
                    pass
            await _write(response, reader, writer, keep)
            if not keep:
                break
        clean = True
    except (asyncio.IncompleteReadError, ConnectionError, StreamAborted):
        pass
    except ProtocolError as exc:
        log.warning("closing connection: %s", exc)
    finally:
        _connections.discard(writer)
        if clean:
            writer.close()
        else:
            writer.transport.abort()


async def start_server(handler: Handler, host: str, port: int) -> asyncio.Server:
    serve = partial(_serve, handler)
    return await asyncio.start_server(serve, host, port, limit=MAX_HEAD, reuse_address=True)
