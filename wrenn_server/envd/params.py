"""Typed reads of a JSON request body; anything malformed is an `InvalidRequest` naming the field."""

from __future__ import annotations

import json
from typing import Any

from .errors import InvalidRequest, TooLarge
from .http import BodyTooLarge, Request

JsonObject = dict[str, Any]
MAX_JSON = 64 * 1024 * 1024


async def read_json(request: Request) -> JsonObject:
    try:
        return parse_object(await request.body.read_all(MAX_JSON))
    except BodyTooLarge as exc:
        raise TooLarge(str(exc)) from exc


def parse_object(raw: bytes) -> JsonObject:
    try:
        data = json.loads(raw) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidRequest("body must be a JSON object")
    return data


def _typed(data: JsonObject, key: str, kind: type | tuple[type, ...], label: str) -> Any:
    value = data.get(key)
    # bool is an int subclass, but `true` is never a valid count or pid.
    if value is not None and (not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)):
        raise InvalidRequest(f"'{key}' must be {label}")
    return value


def opt_str(data: JsonObject, key: str) -> str | None:
    value: str | None = _typed(data, key, str, "a string")
    return value


def req_str(data: JsonObject, key: str) -> str:
    value = opt_str(data, key)
    if not value:
        raise InvalidRequest(f"'{key}' is required")
    return value


def opt_int(data: JsonObject, key: str) -> int | None:
    value: int | None = _typed(data, key, int, "an integer")
    return value


def opt_number(data: JsonObject, key: str) -> float | None:
    value: float | None = _typed(data, key, (int, float), "a number")
    return None if value is None else float(value)


def opt_bool(data: JsonObject, key: str) -> bool:
    return bool(_typed(data, key, bool, "a boolean"))


def str_list(data: JsonObject, key: str) -> list[str]:
    value = _typed(data, key, list, "a list of strings") or []
    if not all(isinstance(item, str) for item in value):
        raise InvalidRequest(f"'{key}' must be a list of strings")
    return list(value)


def str_map(data: JsonObject, key: str) -> dict[str, str]:
    value = _typed(data, key, dict, "an object of strings") or {}
    if not all(isinstance(v, str) for v in value.values()):
        raise InvalidRequest(f"'{key}' must be an object of strings")
    return dict(value)
