"""What every request model shares: strict types, unknown fields ignored; sizes; RFC 3339 timestamps."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, overload

from pydantic import BaseModel, ConfigDict, Field

from wrenn_server.proto.limits import MAX_INT32

# A count or size the agent's int32 fields carry; 0 where the field says so means "the default".
Int32 = Annotated[int, Field(ge=0, le=MAX_INT32)]


class Request(BaseModel):
    """A request body: JSON types as declared (no "2" for 2), fields the API does not know are ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")


@overload
def rfc3339(value: datetime) -> str: ...
@overload
def rfc3339(value: datetime | None) -> str | None: ...
def rfc3339(value: datetime | None) -> str | None:
    """A timestamp as the API writes it: UTC, seconds, `Z`."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value is not None else None
