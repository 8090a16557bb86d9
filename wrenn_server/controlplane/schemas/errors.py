"""The error body every failed request answers (docs/api.md, "Errors"); `..errors` holds the error tree behind it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable error code, e.g. `invalid_request`, `not_found`, `invalid_state`.")
    message: str = Field(description="What went wrong, for people.")


class ErrorBody(BaseModel):
    """Every error the API answers (docs/api.md, "Errors")."""

    error: ErrorDetail


# Documents the error body on every operation (FastAPI then leaves out its unused 422 validation response).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorBody, "description": "The request was refused."},
    "5XX": {"model": ErrorBody, "description": "The control plane, a host or a capsule failed."},
}

