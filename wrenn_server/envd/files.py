"""Routes under /fs and /files: entry info, listing, mkdir, move, remove, and streamed download/upload."""

from __future__ import annotations

import errno
import grp
import os
import pwd
import shutil
import stat
import tempfile
from collections.abc import AsyncGenerator
from contextlib import suppress
from typing import BinaryIO

from ..proto.envd import EntryAnswer, EntryInfo, EntryList, EntryType, ListRequest, MoveRequest, PathRequest
from .errors import Conflict, InvalidRequest
from .http import Handler, Request, Response, StreamAborted
from .params import answer, read_message
from .users import Defaults, User

CHUNK = 64 * 1024


def entry_of(path: str, st: os.stat_result | None = None) -> EntryInfo:
    st = st or os.lstat(path)
    mode = st.st_mode
    kind = EntryType.DIRECTORY if stat.S_ISDIR(mode) else EntryType.SYMLINK if stat.S_ISLNK(mode) else EntryType.FILE
    return EntryInfo(
        os.path.basename(path) or path, path, kind, st.st_size, stat.S_IMODE(mode), stat.filemode(mode),
        _user_name(st.st_uid), _group_name(st.st_gid), int(st.st_mtime),
        os.readlink(path) if kind is EntryType.SYMLINK else None,
    )


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _walk(path: str, depth: int, out: list[EntryInfo]) -> None:
    with os.scandir(path) as entries:
        for entry in entries:
            out.append(entry_of(entry.path, entry.stat(follow_symlinks=False)))
            if depth > 1 and entry.is_dir(follow_symlinks=False):
                with suppress(PermissionError):  # an unreadable subdirectory is listed, just not entered
                    _walk(entry.path, depth - 1, out)


def _make_dirs(path: str, owner: User | None) -> None:
    """`os.makedirs(exist_ok=True)`, giving the directories it creates to `owner`."""
    missing = []
    while not os.path.lexists(path):
        missing.append(path)
        path = os.path.dirname(path)
    for directory in reversed(missing):
        os.mkdir(directory)
        if owner:
            os.chown(directory, owner.uid, owner.gid)


async def _read_file(f: BinaryIO, size: int) -> AsyncGenerator[bytes, None]:
    try:
        while size > 0:
            data = f.read(min(CHUNK, size))
            if not data:
                raise StreamAborted(f"{f.name} shrank while it was being read")
            size -= len(data)
            yield data
    finally:
        f.close()


def routes(defaults: Defaults) -> dict[tuple[str, str], Handler]:
    async def body_path(request: Request) -> str:
        return defaults.resolve_path((await read_message(request, PathRequest)).path)

    def query_path(request: Request) -> str:
        path = request.query.get("path")
        if not path:
            raise InvalidRequest("query parameter 'path' is required")
        return defaults.resolve_path(path)

    async def stat_(request: Request) -> Response:
        return answer(entry_of(await body_path(request)))

    async def list_(request: Request) -> Response:
        body = await read_message(request, ListRequest)
        path = defaults.resolve_path(body.path)
        depth = body.depth or 1
        if depth < 0:
            raise InvalidRequest("'depth' must not be negative")
        entries: list[EntryInfo] = []
        _walk(path, depth, entries)
        return answer(EntryList(sorted(entries, key=lambda e: e.path)))

    async def mkdir(request: Request) -> Response:
        path = await body_path(request)
        if os.path.lexists(path):
            raise Conflict(f"already exists: {path}")
        _make_dirs(path, defaults.owner())
        return answer(EntryAnswer(entry_of(path)))

    async def move(request: Request) -> Response:
        body = await read_message(request, MoveRequest)
        source, destination = defaults.resolve_path(body.source), defaults.resolve_path(body.destination)
        os.lstat(source)  # a missing source is a 404 about the source, not about the destination
        _make_dirs(os.path.dirname(destination), defaults.owner())
        try:
            os.rename(source, destination)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            shutil.move(source, destination)
        return answer(EntryAnswer(entry_of(destination)))

    async def remove(request: Request) -> Response:
        path = await body_path(request)
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)
        return Response(204)

    async def download(request: Request) -> Response:
        path = query_path(request)
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or device would block the event loop
            raise InvalidRequest(f"not a regular file: {path}")
        f = open(path, "rb")  # closed by the stream
        size = os.fstat(f.fileno()).st_size
        return Response(200, content_type="application/octet-stream", stream=_read_file(f, size), length=size)

    async def upload(request: Request) -> Response:
        path = query_path(request)
        if os.path.isdir(path):
            raise Conflict(f"is a directory: {path}")
        owner = defaults.owner()
        parent = os.path.dirname(path)
        _make_dirs(parent, owner)
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            mode = 0o644
        fd, temp = tempfile.mkstemp(dir=parent, prefix=f".{os.path.basename(path)}.", suffix=".part")
        try:
            with open(fd, "wb") as f:
                while chunk := await request.body.read_chunk():
                    f.write(chunk)
                os.fchmod(fd, mode)
                if owner:
                    os.fchown(fd, owner.uid, owner.gid)
            os.replace(temp, path)
        except BaseException:
            with suppress(OSError):
                os.unlink(temp)
            raise
        return answer(entry_of(path))

    return {
        ("POST", "/fs/stat"): stat_,
        ("POST", "/fs/list"): list_,
        ("POST", "/fs/mkdir"): mkdir,
        ("POST", "/fs/move"): move,
        ("POST", "/fs/remove"): remove,
        ("GET", "/files"): download,
        ("PUT", "/files"): upload,
    }
