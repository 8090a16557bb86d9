"""Files inside a capsule (docs/api.md, "Files")."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from wrenn_server.proto._generated import hostagent_pb2 as pb

from ..errors import TooLarge
from .deps import CP, Caller, CapsuleId

router = APIRouter(prefix="/v1/capsules", tags=["files"])
_MULTIPART_SLACK = 64 * 1024

# The uploads read their multipart body themselves (as it streams), so FastAPI cannot describe it.
UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["path", "file"],
                    "properties": {
                        "path": {"type": "string", "description": "Path inside the capsule; parents are created."},
                        "file": {"type": "string", "format": "binary", "description": "The file's bytes."},
                    },
                }
            }
        },
    }
}


class PathBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    path: str = Field(description="Absolute path inside the capsule.")


class ListBody(PathBody):
    depth: int = Field(1, description="Recursion depth; 1 lists the directory's children.")


class FileEntry(BaseModel):
    name: str
    path: str
    type: str
    size: int
    mode: int
    permissions: str
    owner: str
    group: str
    modified_at: int
    symlink_target: str | None = None

    @classmethod
    def of(cls, entry: pb.FileEntry) -> FileEntry:
        return cls(
            name=entry.name,
            path=entry.path,
            type=entry.type,
            size=entry.size,
            mode=entry.mode,
            permissions=entry.permissions,
            owner=entry.owner,
            group=entry.group,
            modified_at=entry.modified_at,
            symlink_target=entry.symlink_target or None,
        )


class ListDirResult(BaseModel):
    entries: list[FileEntry]


class MakeDirResult(BaseModel):
    entry: FileEntry


async def _download(cp: CP, principal: Caller, sandbox_id: CapsuleId, path: str) -> StreamingResponse:
    first, rest = await cp.files.open_read(principal, sandbox_id, path)

    async def body() -> AsyncIterator[bytes]:
        try:
            if first:
                yield first
            async for chunk in rest:
                yield chunk
        finally:
            await rest.aclose()

    return StreamingResponse(body(), media_type="application/octet-stream")


@router.post("/{id}/files/read", response_class=StreamingResponse)
async def read_file(principal: Caller, cp: CP, sandbox_id: CapsuleId, body: PathBody) -> StreamingResponse:
    return await _download(cp, principal, sandbox_id, body.path)


@router.post("/{id}/files/stream/read", response_class=StreamingResponse)
async def read_file_stream(
    principal: Caller, cp: CP, sandbox_id: CapsuleId, body: PathBody
) -> StreamingResponse:
    return await _download(cp, principal, sandbox_id, body.path)


@router.post("/{id}/files/write", status_code=status.HTTP_204_NO_CONTENT, openapi_extra=UPLOAD_BODY)
async def write_file(principal: Caller, cp: CP, sandbox_id: CapsuleId, request: Request) -> Response:
    """Multipart `path` + `file`; larger than the upload limit is 413 `too_large`."""
    limit = cp.settings.max_upload_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + _MULTIPART_SLACK:
        raise TooLarge(f"file is larger than {cp.settings.max_upload_mb} MB")
    content_type = request.headers.get("content-type")
    await cp.files.upload(principal, sandbox_id, content_type, request.stream(), limit)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{id}/files/stream/write", status_code=status.HTTP_204_NO_CONTENT, openapi_extra=UPLOAD_BODY)
async def write_file_stream(principal: Caller, cp: CP, sandbox_id: CapsuleId, request: Request) -> Response:
    """Chunked multipart `path` + `file`, forwarded to the agent in 64 KiB chunks as it arrives."""
    content_type = request.headers.get("content-type")
    await cp.files.upload(principal, sandbox_id, content_type, request.stream(), None)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{id}/files/list", response_model_exclude_none=True)
async def list_dir(principal: Caller, cp: CP, sandbox_id: CapsuleId, body: ListBody) -> ListDirResult:
    entries = await cp.files.list_dir(principal, sandbox_id, body.path, body.depth)
    return ListDirResult(entries=[FileEntry.of(entry) for entry in entries])


@router.post("/{id}/files/mkdir", response_model_exclude_none=True)
async def make_dir(principal: Caller, cp: CP, sandbox_id: CapsuleId, body: PathBody) -> MakeDirResult:
    return MakeDirResult(entry=FileEntry.of(await cp.files.make_dir(principal, sandbox_id, body.path)))


@router.post("/{id}/files/remove", status_code=status.HTTP_204_NO_CONTENT)
async def remove_path(principal: Caller, cp: CP, sandbox_id: CapsuleId, body: PathBody) -> Response:
    await cp.files.remove(principal, sandbox_id, body.path)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
