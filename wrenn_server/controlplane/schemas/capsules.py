"""Capsules (docs/api.md, "Capsules"): the create request and the capsule as every answer and event shows it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from wrenn_server.proto.limits import MAX_INT32, MIN_MEMORY_MB

from ..db.models import Sandbox
from ..ids import Kind, format_id
from ..services.status import ENDED_OR_LOST
from .common import Int32, Request, rfc3339

DEFAULT_VCPUS = 1
DEFAULT_MEMORY_MB = 512
DEFAULT_DISK_MB = 5120
MIN_TIMEOUT_SEC = 60
METADATA_KEY = r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$"
RESERVED_METADATA = frozenset({"kernel_version", "vmm_version", "agent_version", "envd_version"})
MAX_METADATA_KEYS = 20
MAX_METADATA_VALUE = 64


def _enough_memory(value: int) -> int:
    if 0 < value < MIN_MEMORY_MB:
        raise ValueError(f"at least {MIN_MEMORY_MB} MB, not {value}")
    return value


def _not_reserved(metadata: dict[str, str]) -> dict[str, str]:
    for key in metadata:
        if key in RESERVED_METADATA:
            raise ValueError(f"metadata key '{key}' is reserved")
    return metadata


MemoryMb = Annotated[
    int,
    Field(ge=0, le=MAX_INT32, json_schema_extra={"anyOf": [{"const": 0}, {"minimum": MIN_MEMORY_MB}]}),
    AfterValidator(_enough_memory),
]
MetadataKey = Annotated[str, StringConstraints(pattern=METADATA_KEY)]
Metadata = Annotated[
    dict[MetadataKey, Annotated[str, Field(max_length=MAX_METADATA_VALUE)]],
    Field(max_length=MAX_METADATA_KEYS, json_schema_extra={"propertyNames": {"pattern": METADATA_KEY}}),
    AfterValidator(_not_reserved),
]


class CreateCapsule(Request):
    template: str | None = Field(None, description="Template name (default `minimal`).")
    vcpus: Int32 | None = Field(None, description=f"Virtual CPUs (0 or absent: {DEFAULT_VCPUS}).")
    memory_mb: MemoryMb | None = Field(
        None, description=f"Memory in MiB, at least {MIN_MEMORY_MB} (0 or absent: {DEFAULT_MEMORY_MB})."
    )
    timeout_sec: Int32 | None = Field(
        None, description=f"Inactivity TTL; 0 = never, 1–{MIN_TIMEOUT_SEC - 1} become {MIN_TIMEOUT_SEC}."
    )
    disk_size_mb: Int32 | None = Field(None, description=f"Disk size in MiB (0 or absent: {DEFAULT_DISK_MB}).")
    metadata: Metadata | None = Field(
        None,
        description=f"User labels: at most {MAX_METADATA_KEYS} keys matching `{METADATA_KEY}`, values of at most "
        f"{MAX_METADATA_VALUE} characters; {', '.join(sorted(RESERVED_METADATA))} are reserved.",
    )


class Capsule(BaseModel):
    id: str
    status: str
    template: str
    vcpus: int
    memory_mb: int
    timeout_sec: int
    disk_size_mb: int
    disk_used_mb: int | None = None
    host_ip: str | None = None
    created_at: str
    started_at: str | None = None
    last_active_at: str | None = None
    last_updated: str
    metadata: dict[str, str]

    @classmethod
    def of(cls, row: Sandbox, disk_used_mb: int | None = None) -> Capsule:
        return cls(
            id=format_id(Kind.SANDBOX, row.id),
            status=row.status,
            template=row.template,
            vcpus=row.vcpus,
            memory_mb=row.memory_mb,
            timeout_sec=row.timeout_sec,
            disk_size_mb=row.disk_size_mb,
            disk_used_mb=disk_used_mb,
            host_ip=row.host_ip or None,
            created_at=rfc3339(row.created_at) or "",
            started_at=rfc3339(row.started_at),
            last_active_at=rfc3339(row.last_active_at),
            last_updated=rfc3339(row.last_updated) or "",
            metadata=_metadata(row),
        )


def capsule_json(row: Sandbox) -> Mapping[str, Any]:
    """A capsule exactly as `GET /v1/capsules/{id}` renders it (the `sandbox` of its events)."""
    return Capsule.of(row).model_dump(mode="json", exclude_none=True)


def _metadata(row: Sandbox) -> dict[str, str]:
    """The capsule's labels; for one that ended or was lost, `end_reason` says why (docs/lifecycle.md)."""
    metadata = {str(k): str(v) for k, v in (row.meta or {}).items()}
    if row.error and row.status in ENDED_OR_LOST:
        metadata["end_reason"] = row.error
    return metadata
