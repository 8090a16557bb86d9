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
from dataclasses import asdict, dataclass
from typing import Any, BinaryIO

from .errors import Conflict, InvalidRequest
from .http import Handler, Request, Response, StreamAborted, json_response
from .params import opt_int, read_json, req_str
from .users import Defaults, User

CHUNK = 64 * 1024


@dataclass(frozen=True)
class EntryInfo:
    name: str
    path: str
    type: str
    size: int
    mode: int
    permissions: str
    owner: str
    group: str
    modified_at: int
    symlink_target: str | None

    @classmethod
    def of(cls, path: str, st: os.stat_result | None = None) -> EntryInfo:
        st = st or os.lstat(path)
        kind = "directory" if stat.S_ISDIR(st.st_mode) else "symlink" if stat.S_ISLNK(st.st_mode) else "file"
        return cls(
            os.path.basename(path) or path, path, kind, st.st_size, stat.S_IMODE(st.st_mode),
            stat.filemode(st.st_mode), _user_name(st.st_uid), _group_name(st.st_gid), int(st.st_mtime),
            os.readlink(path) if kind == "symlink" else None,
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.symlink_target is None:
            del data["symlink_target"]
        return data


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
            out.append(EntryInfo.of(entry.path, entry.stat(follow_symlinks=False)))
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
    async def body_path(request: Request, key: str = "path") -> str:
        return defaults.resolve_path(req_str(await read_json(request), key))

    def query_path(request: Request) -> str:
        path = request.query.get("path")
        if not path:
            raise InvalidRequest("query parameter 'path' is required")
        return defaults.resolve_path(path)

    async def stat_(request: Request) -> Response:
        return json_response(EntryInfo.of(await body_path(request)).to_json())

    async def list_(request: Request) -> Response:
        body = await read_json(request)
        path = defaults.resolve_path(req_str(body, "path"))
        depth = opt_int(body, "depth") or 1
        if depth < 0:
            raise InvalidRequest("'depth' must not be negative")
        entries: list[EntryInfo] = []
        _walk(path, depth, entries)
        return json_response({"entries": [e.to_json() for e in sorted(entries, key=lambda e: e.path)]})

    async def mkdir(request: Request) -> Response:
        path = await body_path(request)
        if os.path.lexists(path):
            raise Conflict(f"already exists: {path}")
        _make_dirs(path, defaults.owner())
        return json_response({"entry": EntryInfo.of(path).to_json()})

    async def move(request: Request) -> Response:
        body = await read_json(request)
        source = defaults.resolve_path(req_str(body, "source"))
        destination = defaults.resolve_path(req_str(body, "destination"))
        os.lstat(source)  # a missing source is a 404 about the source, not about the destination
        _make_dirs(os.path.dirname(destination), defaults.owner())
        try:
            os.rename(source, destination)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            shutil.move(source, destination)
        return json_response({"entry": EntryInfo.of(destination).to_json()})

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
        return json_response(EntryInfo.of(path).to_json())

    return {
        ("POST", "/fs/stat"): stat_,
        ("POST", "/fs/list"): list_,
        ("POST", "/fs/mkdir"): mkdir,
        ("POST", "/fs/move"): move,
        ("POST", "/fs/remove"): remove,
        ("GET", "/files"): download,
        ("PUT", "/files"): upload,
    }
