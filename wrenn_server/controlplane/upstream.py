"""HTTP/1.1 to services inside capsules, for the port proxy: kept-alive connections and bytes passed through.

A general client (httpx, httpcore) costs about half a millisecond per request on top of the socket work here,
as much as the capsule's own answer; the proxy only needs to frame one request and one response.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

Headers = list[tuple[bytes, bytes]]
_NO_BODY_STATUS = (204, 304)
_SAFE = ("GET", "HEAD", "OPTIONS")
MAX_HEAD = 64 * 1024


class UpstreamError(Exception):
    """The service could not be reached, or did not answer with HTTP."""


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @property
    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


@dataclass
class Response:
    status: int
    headers: Headers
    body: AsyncGenerator[bytes, None]  # its connection goes back to the pool once it is read to the end

    async def aclose(self) -> None:
        await self.body.aclose()


class Upstream:
    def __init__(self, max_idle_per_target: int = 16) -> None:
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._max_idle = max_idle_per_target

    async def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    async def _connect(self, target: tuple[str, int]) -> _Connection:
        try:
            async with asyncio.timeout(10):
                reader, writer = await asyncio.open_connection(*target, limit=MAX_HEAD)
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(str(exc) or type(exc).__name__) from exc
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Connection(reader, writer)

    def _pooled(self, target: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(target)
        while idle:
            conn = idle.pop()
            if conn.usable:
                return conn
            conn.close()
        return None

    async def request(
        self,
        address: str,
        port: int,
        method: str,
        target: bytes,
        headers: Headers,
        body: AsyncIterator[bytes] | None,
        chunked: bool,
    ) -> Response:
        """Send the request; `headers` go as given (the caller drops hop-by-hop ones and keeps Content-Length
        when there is one), `chunked` re-frames a body of unknown length."""
        where = (address, port)
        if chunked:
            headers = [*headers, (b"transfer-encoding", b"chunked")]
        lines = b"".join(b"%s: %s\r\n" % (k, v) for k, v in headers)
        head = b"%s %s HTTP/1.1\r\n%s\r\n" % (method.encode(), target, lines)
        conn = self._pooled(where)
        if conn is not None and body is None and method in _SAFE:
            # A kept-alive connection the service closed meanwhile fails at once; a bodiless request can be
            # sent again on a new connection without the service having seen it twice.
            try:
                return await self._exchange(conn, where, method, head, None, False)
            except UpstreamError:
                conn.close()
            conn = None
        return await self._exchange(conn or await self._connect(where), where, method, head, body, chunked)

    async def _exchange(
        self,
        conn: _Connection,
        where: tuple[str, int],
        method: str,
        head: bytes,
        body: AsyncIterator[bytes] | None,
        chunked: bool,
    ) -> Response:
        writer, reader = conn.writer, conn.reader
        try:
            writer.write(head)
            if body is not None:
                async for chunk in body:
                    if chunk:
                        writer.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                        await writer.drain()
                if chunked:
                    writer.write(b"0\r\n\r\n")
            await writer.drain()
            while True:
                status, headers, version = _parse_head(await reader.readuntil(b"\r\n\r\n"))
                if not 100 <= status < 200:
                    break  # 1xx answers (100 Continue, 103 Early Hints) precede the real one
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            conn.close()
            raise UpstreamError(str(exc) or type(exc).__name__) from exc
        except BaseException:  # the caller's body failed or the call was cancelled: the request is half-sent
            conn.close()
            raise
        values = {k.lower(): v for k, v in headers}
        keep = version == b"HTTP/1.1" and values.get(b"connection", b"").lower() != b"close"
        if method == "HEAD" or status in _NO_BODY_STATUS:
            frames = _empty()
        elif values.get(b"transfer-encoding", b"").lower().endswith(b"chunked"):
            frames = _chunks(reader)
        elif b"content-length" in values:
            frames = _sized(reader, int(values[b"content-length"]))
        else:
            frames, keep = _until_close(reader), False
        return Response(status, headers, self._tracked(conn, where, frames, keep))

    async def _tracked(
        self,
        conn: _Connection,
        where: tuple[str, int],
        frames: AsyncIterator[bytes],
        keep: bool,
    ) -> AsyncGenerator[bytes, None]:
        complete = False
        try:
            async for chunk in frames:
                yield chunk
            complete = True
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            raise UpstreamError(str(exc) or type(exc).__name__) from exc
        finally:
            idle = self._idle.setdefault(where, [])
            if complete and keep and conn.usable and len(idle) < self._max_idle:
                idle.append(conn)
            else:
                conn.close()


def _parse_head(data: bytes) -> tuple[int, Headers, bytes]:
    status_line, _, rest = data[:-4].partition(b"\r\n")
    version, _, tail = status_line.partition(b" ")
    if not version.startswith(b"HTTP/1."):
        raise ValueError("not an HTTP/1.x answer")
    headers: Headers = []
    for line in rest.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if sep:
            headers.append((name.strip(), value.strip()))
    return int(tail[:3]), headers, version


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


async def _sized(reader: asyncio.StreamReader, remaining: int) -> AsyncIterator[bytes]:
    while remaining > 0:
        data = await reader.read(min(remaining, 256 * 1024))
        if not data:
            raise asyncio.IncompleteReadError(b"", remaining)
        remaining -= len(data)
        yield data


async def _chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # trailers: dropped
            return
        yield (await reader.readexactly(size + 2))[:-2]


async def _until_close(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while data := await reader.read(256 * 1024):
        yield data
