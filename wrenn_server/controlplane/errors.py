"""The control plane's one error tree, and the single place it becomes an HTTP response.

    WrennError (500 internal_error)
    ├── InvalidRequest (400 invalid_request)
    ├── Unauthorized (401 unauthorized)
    ├── Forbidden (403 forbidden)
    ├── NotFound (404 not_found)
    ├── InvalidState (409 invalid_state)
    ├── Conflict (409 conflict)
    │   └── TemplateNameTaken (409 template_name_taken)
    ├── TooLarge (413 too_large)
    ├── NoHostsAvailable (503 no_hosts_available)
    ├── HostUnavailable (503 host_unavailable)
    ├── AgentError (502 agent_error; 501 for an unimplemented RPC)
    ├── Timeout (504 timeout)
    └── InternalError (500 internal_error)

Agent RPC failures are translated once, by `from_rpc_error`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .schemas.errors import ERROR_RESPONSES as ERROR_RESPONSES  # the error body on every operation (app.py)

log = logging.getLogger(__name__)


class WrennError(Exception):
    """Root of every error the API reports; `code` and `status` end up in the response."""

    code = "internal_error"
    status = 500

    def __init__(self, message: str = "internal server error", *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class InvalidRequest(WrennError):
    code, status = "invalid_request", 400


class Unauthorized(WrennError):
    code, status = "unauthorized", 401


class Forbidden(WrennError):
    code, status = "forbidden", 403


class NotFound(WrennError):
    code, status = "not_found", 404


class InvalidState(WrennError):
    code, status = "invalid_state", 409


class Conflict(WrennError):
    code, status = "conflict", 409


class TemplateNameTaken(Conflict):
    code = "template_name_taken"


class TooLarge(WrennError):
    code, status = "too_large", 413


class NoHostsAvailable(WrennError):
    code, status = "no_hosts_available", 503


class HostUnavailable(WrennError):
    code, status = "host_unavailable", 503


class AgentError(WrennError):
    code, status = "agent_error", 502


class Timeout(WrennError):
    code, status = "timeout", 504


class InternalError(WrennError):
    code, status = "internal_error", 500


_RPC_ERRORS: dict[grpc.StatusCode, type[WrennError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.FAILED_PRECONDITION: InvalidState,
    grpc.StatusCode.ALREADY_EXISTS: Conflict,
    grpc.StatusCode.RESOURCE_EXHAUSTED: NoHostsAvailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Timeout,
    grpc.StatusCode.UNAVAILABLE: HostUnavailable,
    grpc.StatusCode.PERMISSION_DENIED: Forbidden,
    grpc.StatusCode.OUT_OF_RANGE: TooLarge,
}


def from_rpc_error(exc: grpc.aio.AioRpcError) -> WrennError:
    """Translate a failed agent call into the API error it means; the message is the agent's own."""
    code = exc.code()
    message = exc.details() or (code.name.lower() if code is not None else "agent call failed")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return AgentError(message, status=501)
    if code is not None and code in _RPC_ERRORS:
        return _RPC_ERRORS[code](message)
    return AgentError(message)


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_response(code: str, message: str, status: int) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status)


def _describe_validation(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "malformed JSON body"
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "header", "[key]")]
    field = ".".join(loc)[:100]  # a map key is part of it, and may be long
    msg = _limit_message(first)
    if first.get("type") == "model_attributes_type" or not field:
        return f"invalid request body: {msg}"
    return f"invalid field '{field}': {msg}"


def _number(value: object) -> object:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _limit_message(error: Any) -> str:
    """A broken limit in the words of the schema that declares it."""
    kind, ctx = error.get("type"), error.get("ctx") or {}
    if kind == "greater_than_equal":
        return f"must be at least {_number(ctx['ge'])}"
    if kind == "less_than_equal":
        return f"must be at most {_number(ctx['le'])}"
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    return str(error.get("msg", "invalid value"))


async def _wrenn_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, WrennError)
    if exc.status >= 500:
        level = logging.INFO if exc.status == 503 else logging.WARNING
        log.log(level, "request failed: %s %s", exc.code, exc.message)
    return error_response(exc.code, exc.message, exc.status)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response("invalid_request", _describe_validation(exc), 400)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        return error_response("not_found", "route not found", 404)
    if exc.status_code == 405:
        return error_response("method_not_allowed", "method not allowed", 405)
    code = "invalid_request" if exc.status_code < 500 else "internal_error"
    return error_response(code, str(exc.detail), exc.status_code)


async def _unhandled(_: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error: %s", exc, exc_info=exc)
    return error_response("internal_error", "internal server error", 500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(WrennError, _wrenn_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(json.JSONDecodeError, _malformed_json)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unhandled)


async def _malformed_json(_: Request, exc: Exception) -> JSONResponse:
    return error_response("invalid_request", "malformed JSON body", 400)
