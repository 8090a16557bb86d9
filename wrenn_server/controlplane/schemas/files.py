"""Files inside a capsule (docs/api.md, "Files"): paths, entries, listings and the upload body."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from wrenn_server.proto._generated import hostagent_pb2 as pb

from .common import Int32, Request

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


class PathBody(Request):
    path: str = Field(description="Absolute path inside the capsule.")


class ListBody(PathBody):
    depth: Int32 = Field(1, description="Recursion depth; 1 (or 0) lists the directory's children.")


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
        """The agent's entry, field for field (the same names on the wire); no symlink target is absent."""
        fields = {name: getattr(entry, name) for name in cls.model_fields}
        return cls.model_validate({**fields, "symlink_target": entry.symlink_target or None})


class ListDirResult(BaseModel):
    entries: list[FileEntry]


class MakeDirResult(BaseModel):
    entry: FileEntry
