"""Snapshot templates (docs/api.md, "Snapshots")."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from ..db.models import Template as TemplateRow
from ..ids import ZERO_UUID
from .common import Request, rfc3339

TemplateType = Literal["base", "snapshot"]


class SnapshotBody(Request):
    sandbox_id: str = Field(description="The running capsule to snapshot (`cl-…`).")
    name: str | None = Field(None, description="Template name (default `template-<8hex>`).")


class Template(BaseModel):
    name: str
    type: str = Field(description="`base` or `snapshot`.")
    vcpus: int | None = None
    memory_mb: int | None = None
    size_bytes: int
    created_at: str | None
    platform: bool
    protected: bool
    metadata: dict[str, Any] | None = None

    @classmethod
    def of(cls, row: TemplateRow) -> Template:
        platform = row.team_id == ZERO_UUID
        return cls(
            name=row.name,
            type=row.type,
            vcpus=row.vcpus,
            memory_mb=row.memory_mb,
            size_bytes=row.size_bytes,
            created_at=rfc3339(row.created_at),
            platform=platform,
            protected=platform,
            metadata={k: v for k, v in (row.meta or {}).items() if k != "host_id"} or None,
        )
