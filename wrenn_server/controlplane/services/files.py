"""Files inside a running capsule: read, list, mkdir, remove, and uploads streamed to the agent."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import suppress

from wrenn_server.proto._generated import hostagent_pb2 as pb

from ..errors import AgentError, InvalidRequest, TooLarge
from ..ids import Kind, format_id
from ..schemas.files import FileEntry
from .agents import AgentClient, AgentPool
from .auth import Principal
from .capsules import CapsuleService
from .multipart import PartData, PartEnd, PartStart, boundary_of, read_parts

CHUNK = 64 * 1024
MAX_FIELD = 64 * 1024
# File bytes that arrive before the `path` field are held until it does, up to this much.
MAX_EARLY_FILE = 100 * 1024 * 1024
# How long an abandoned upload waits for the agent to discard it before the call is cancelled.
ABANDON_GRACE = 10.0


def check_path(path: str) -> str:
    if not path:
        raise InvalidRequest("invalid field 'path': must not be empty")
    if "\x00" in path:
        raise InvalidRequest("invalid field 'path': must not contain NUL")
    return path


class AgentWriter:
    """One WriteFileStream call fed through a small queue, so a slow agent slows the upload down."""

    def __init__(self, client: AgentClient, wire_id: str, path: str) -> None:
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=4)
        self._buffer = bytearray()
        self._upload = client.open_write_stream(wire_id, path, self._chunks())
        self._call = asyncio.ensure_future(self._upload.result())

    async def _chunks(self) -> AsyncIterator[bytes]:
        # Ends on the None that `finish()` or `abort()` queues; only after `finish()` is the upload complete.
        while (chunk := await self._queue.get()) is not None:
            yield chunk

    async def _put(self, item: bytes | None) -> None:
        put = asyncio.ensure_future(self._queue.put(item))
        done, _ = await asyncio.wait({put, self._call}, return_when=asyncio.FIRST_COMPLETED)
        if put in done:
            return
        put.cancel()
        self._call.result()  # the agent's error, if it failed
        raise AgentError("the agent ended the upload early")

    async def send(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= CHUNK:
            chunk = bytes(self._buffer[:CHUNK])
            del self._buffer[:CHUNK]
            await self._put(chunk)

    async def finish(self) -> pb.FileEntry:
        if self._buffer:
            await self._put(bytes(self._buffer))
            self._buffer.clear()
        await self._put(None)
        return await self._call

    async def abort(self) -> None:
        """End the stream without its end marker, so the agent discards the partial file and answers;
        a call still open after ABANDON_GRACE (or an abort that is itself cancelled) is cancelled."""
        self._upload.abandon()
        while not self._queue.empty():  # what is still queued is not wanted any more
            self._queue.get_nowait()
        self._queue.put_nowait(None)  # wakes `_chunks`, which ends the request stream
        try:
            await asyncio.wait({self._call}, timeout=ABANDON_GRACE)
        finally:
            if not self._call.done():
                self._upload.cancel()
                self._call.cancel()
            with suppress(BaseException):
                await self._call


class FileService:
    def __init__(self, capsules: CapsuleService, pool: AgentPool) -> None:
        self._capsules = capsules
        self._pool = pool

    async def _target(self, principal: Principal, sandbox_id: uuid.UUID) -> tuple[AgentClient, str]:
        row, host = await self._capsules.running(principal, sandbox_id)
        return self._pool.client(host), format_id(Kind.SANDBOX, row.id)

    async def open_read(
        self, principal: Principal, sandbox_id: uuid.UUID, path: str
    ) -> tuple[bytes, AsyncGenerator[bytes, None]]:
        """The first chunk (so a missing file fails before any byte is sent) and the rest."""
        client, wire_id = await self._target(principal, sandbox_id)
        chunks = client.read_file_stream(wire_id, check_path(path))
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            first = b""
        return first, chunks

    async def list_dir(
        self, principal: Principal, sandbox_id: uuid.UUID, path: str, depth: int
    ) -> list[FileEntry]:
        client, wire_id = await self._target(principal, sandbox_id)
        request = pb.ListDirRequest(sandbox_id=wire_id, path=check_path(path), depth=depth or 1)
        return [FileEntry.of(entry) for entry in (await client.list_dir(request)).entries]

    async def make_dir(self, principal: Principal, sandbox_id: uuid.UUID, path: str) -> FileEntry:
        client, wire_id = await self._target(principal, sandbox_id)
        return FileEntry.of(await client.make_dir(wire_id, check_path(path)))

    async def remove(self, principal: Principal, sandbox_id: uuid.UUID, path: str) -> None:
        client, wire_id = await self._target(principal, sandbox_id)
        await client.remove_path(wire_id, check_path(path))

    async def upload(
        self,
        principal: Principal,
        sandbox_id: uuid.UUID,
        content_type: str | None,
        body: AsyncIterator[bytes],
        limit: int | None,
    ) -> pb.FileEntry:
        """Parse the multipart body as it streams; forward the `file` part to the agent as it arrives."""
        boundary = boundary_of(content_type)
        client, wire_id = await self._target(principal, sandbox_id)
        upload = _Upload(client, wire_id, limit)
        try:
            async for event in read_parts(body, boundary):
                await upload.feed(event)
            return await upload.finish()
        except BaseException:
            await upload.abort()
            raise


class _Upload:
    """State of one multipart upload: the `path` field, then the `file` part's bytes."""

    def __init__(self, client: AgentClient, wire_id: str, limit: int | None) -> None:
        self._client, self._wire_id, self._limit = client, wire_id, limit
        self._part: str | None = None
        self._field = bytearray()
        self._path: str | None = None
        self._early = bytearray()
        self._size = 0
        self._file_seen = False
        self._writer: AgentWriter | None = None

    def _start_writer(self, path: str) -> AgentWriter:
        if self._writer is None:
            self._writer = AgentWriter(self._client, self._wire_id, path)
        return self._writer

    async def feed(self, event: PartStart | PartData | PartEnd) -> None:
        if isinstance(event, PartStart):
            self._part = event.name
            self._field.clear()
        elif isinstance(event, PartData):
            await self._data(event.data)
        else:
            if self._part == "path":
                self._path = check_path(self._field.decode("utf-8", "replace"))
                if self._file_seen or self._early:
                    writer = self._start_writer(self._path)
                    await writer.send(bytes(self._early))
                    self._early.clear()
            elif self._part == "file":
                self._file_seen = True
            self._part = None

    async def _data(self, data: bytes) -> None:
        if self._part == "path":
            self._field += data
            if len(self._field) > MAX_FIELD:
                raise InvalidRequest("invalid field 'path': too long")
        elif self._part == "file":
            self._size += len(data)
            if self._limit is not None and self._size > self._limit:
                raise TooLarge(f"file is larger than {self._limit // (1024 * 1024)} MB")
            if self._path is not None:
                await self._start_writer(self._path).send(data)
            else:
                self._early += data
                if len(self._early) > MAX_EARLY_FILE:
                    raise InvalidRequest("the 'path' field must come before a large 'file' part")

    async def finish(self) -> pb.FileEntry:
        if self._path is None:
            raise InvalidRequest("missing field 'path'")
        if not self._file_seen:
            raise InvalidRequest("missing field 'file'")
        return await self._start_writer(self._path).finish()

    async def abort(self) -> None:
        if self._writer is not None:
            await self._writer.abort()
