"""Files inside a capsule (docs/api.md, "Files")."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import StreamingResponse

from ..errors import TooLarge
from ..schemas.files import UPLOAD_BODY, ListBody, ListDirResult, MakeDirResult, PathBody
from .deps import CP, Caller, CapsuleId

router = APIRouter(prefix="/v1/capsules", tags=["files"])
_MULTIPART_SLACK = 64 * 1024


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
    return ListDirResult(entries=await cp.files.list_dir(principal, sandbox_id, body.path, body.depth))


@router.post("/{id}/files/mkdir", response_model_exclude_none=True)
async def make_dir(principal: Caller, cp: CP, sandbox_id: CapsuleId, body: PathBody) -> MakeDirResult:
    return MakeDirResult(entry=await cp.files.make_dir(principal, sandbox_id, body.path))


@router.post("/{id}/files/remove", status_code=status.HTTP_204_NO_CONTENT)
async def remove_path(principal: Caller, cp: CP, sandbox_id: CapsuleId, body: PathBody) -> Response:
    await cp.files.remove(principal, sandbox_id, body.path)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
