"""Errors envd answers with, each with its HTTP status and the contract's `code`.

    EnvdError          500 internal_error
    ├── InvalidRequest 400 invalid_request
    ├── Forbidden      403 forbidden
    ├── NotFound       404 not_found
    ├── Conflict       409 conflict
    ├── TooLarge       413 too_large
    └── Timeout        504 timeout

OS errors are translated once, by `from_os_error`, at the route boundary.
"""

from __future__ import annotations

import errno

from ..proto.envd import ErrorBody, ErrorCode


class EnvdError(Exception):
    status = 500
    code = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> ErrorBody:
        return ErrorBody(self.code, self.message)


class InvalidRequest(EnvdError):
    status = 400
    code = ErrorCode.INVALID_REQUEST


class Forbidden(EnvdError):
    status = 403
    code = ErrorCode.FORBIDDEN


class NotFound(EnvdError):
    status = 404
    code = ErrorCode.NOT_FOUND


class Conflict(EnvdError):
    status = 409
    code = ErrorCode.CONFLICT


class TooLarge(EnvdError):
    status = 413
    code = ErrorCode.TOO_LARGE


class Timeout(EnvdError):
    status = 504
    code = ErrorCode.TIMEOUT


_BY_ERRNO: dict[int, type[EnvdError]] = {
    errno.ENOENT: NotFound,
    errno.EEXIST: Conflict,
    errno.ENOTEMPTY: Conflict,
    errno.EISDIR: InvalidRequest,
    errno.ENOTDIR: InvalidRequest,
    errno.EINVAL: InvalidRequest,
    errno.ENAMETOOLONG: InvalidRequest,
    errno.ELOOP: InvalidRequest,
    errno.ENOEXEC: InvalidRequest,
    errno.EACCES: Forbidden,
    errno.EPERM: Forbidden,
    errno.EROFS: Forbidden,
}


def from_os_error(exc: OSError) -> EnvdError:
    kind = _BY_ERRNO.get(exc.errno or 0, EnvdError)
    reason = (exc.strerror or str(exc)).lower()
    return kind(f"{reason}: {exc.filename}" if exc.filename else reason)
