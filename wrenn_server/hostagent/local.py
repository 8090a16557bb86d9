"""The host agent's RPC service called in-process, for `wrenn up` where the control plane and agent share a loop.

`LocalStub` has the shape of the generated `HostAgentServiceStub` as the control plane uses it: unary calls are
awaited, server streams are iterated and cancelled, the client stream is awaited or cancelled, and failures are
`grpc.aio.AioRpcError`s carrying the servicer's status and message. The servicer runs unchanged, token check
included; only the HTTP/2 round trip (about a millisecond per call here) is left out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any

import grpc

from wrenn_server.proto._generated import hostagent_pb2 as pb

_METHODS = pb.DESCRIPTOR.services_by_name["HostAgentService"].methods


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _Context:
    """The part of `grpc.aio.ServicerContext` the servicer uses."""

    def __init__(self, metadata: Any) -> None:
        self._metadata = tuple(metadata or ())

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise _Aborted(code, details)


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    empty = grpc.aio.Metadata()
    return grpc.aio.AioRpcError(code, empty, empty, details=details)


def _translated(exc: BaseException) -> grpc.aio.AioRpcError:
    if isinstance(exc, _Aborted):
        return _rpc_error(exc.code, exc.details)
    if isinstance(exc, TimeoutError):
        return _rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
    # What a real server answers for an exception its handler did not expect.
    return _rpc_error(grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc).__name__}: {exc}")


class _StreamCall:
    """A server-streaming call: iterate it, cancel it."""

    def __init__(self, messages: AsyncGenerator[Any, None]) -> None:
        self._messages = messages

    def __aiter__(self) -> _StreamCall:
        return self

    async def __anext__(self) -> Any:
        try:
            return await anext(self._messages)
        except StopAsyncIteration:
            raise
        except Exception as exc:
            raise _translated(exc) from exc

    def cancel(self) -> bool:
        asyncio.get_running_loop().create_task(self._close())
        return True

    async def _close(self) -> None:
        with contextlib.suppress(RuntimeError):  # still being iterated: its reader's cancellation ends it
            await self._messages.aclose()


class _UploadCall:
    """The client-streaming call, running as its own task like a real RPC: await it, cancel it."""

    def __init__(self, answer: Any) -> None:
        self._task = asyncio.get_running_loop().create_task(answer)

    def __await__(self) -> Generator[Any, None, Any]:
        return self._result().__await__()

    async def _result(self) -> Any:
        try:
            return await self._task
        except Exception as exc:
            raise _translated(exc) from exc

    def cancel(self) -> bool:
        return self._task.cancel()


class LocalStub:
    def __init__(self, servicer: Any) -> None:
        for method in _METHODS:
            handler = getattr(servicer, method.name)
            setattr(self, method.name, self._bind(handler, method.client_streaming, method.server_streaming))

    @staticmethod
    def _bind(handler: Callable[..., Any], client_streaming: bool, server_streaming: bool) -> Callable[..., Any]:
        if server_streaming:

            def stream(request: Any, metadata: Any = None, timeout: float | None = None) -> _StreamCall:
                return _StreamCall(handler(request, _Context(metadata)))

            return stream
        if client_streaming:

            def upload(requests: Any, metadata: Any = None, timeout: float | None = None) -> _UploadCall:
                return _UploadCall(handler(requests, _Context(metadata)))

            return upload

        async def unary(request: Any, metadata: Any = None, timeout: float | None = None) -> Any:
            try:
                return await asyncio.wait_for(handler(request, _Context(metadata)), timeout)
            except Exception as exc:
                raise _translated(exc) from exc

        return unary
