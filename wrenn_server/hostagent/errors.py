"""Errors of the host agent, each with the gRPC status the control plane receives.

    AgentError                 INTERNAL
    ├── NotFound               NOT_FOUND
    ├── InvalidArgument        INVALID_ARGUMENT
    ├── WrongState             FAILED_PRECONDITION
    ├── Conflict               ALREADY_EXISTS
    ├── NoCapacity             RESOURCE_EXHAUSTED
    ├── CommandTimeout         DEADLINE_EXCEEDED
    ├── Unreachable            UNAVAILABLE
    ├── Forbidden              PERMISSION_DENIED
    ├── TooLarge               OUT_OF_RANGE  (a request over a limit of the capsule's agent)
    └── RuntimeFailure         INTERNAL      (a runtime command failed; the message carries its output)

Low-level failures (subprocess, runsc, QMP, HTTP to envd) are translated into these where they happen.
"""

from __future__ import annotations

import grpc


class AgentError(Exception):
    status: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(AgentError):
    status = grpc.StatusCode.NOT_FOUND


class InvalidArgument(AgentError):
    status = grpc.StatusCode.INVALID_ARGUMENT


class WrongState(AgentError):
    status = grpc.StatusCode.FAILED_PRECONDITION


class Conflict(AgentError):
    status = grpc.StatusCode.ALREADY_EXISTS


class NoCapacity(AgentError):
    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class CommandTimeout(AgentError):
    status = grpc.StatusCode.DEADLINE_EXCEEDED


class Unreachable(AgentError):
    status = grpc.StatusCode.UNAVAILABLE


class RuntimeFailure(AgentError):
    pass


class Forbidden(AgentError):
    status = grpc.StatusCode.PERMISSION_DENIED


class TooLarge(AgentError):
    status = grpc.StatusCode.OUT_OF_RANGE
