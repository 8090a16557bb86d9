"""The contract's messages in and out: a request body read as one (anything malformed is an `InvalidRequest`),
and one sent as an answer."""

from __future__ import annotations

from typing import TypeVar

from ..proto.envd import Message, MessageError
from .errors import InvalidRequest, TooLarge
from .http import BodyTooLarge, Request, Response

MAX_JSON = 64 * 1024 * 1024
M = TypeVar("M", bound=Message)


async def read_message(request: Request, kind: type[M]) -> M:
    try:
        return kind.decode(await request.body.read_all(MAX_JSON))
    except BodyTooLarge as exc:
        raise TooLarge(str(exc)) from exc
    except MessageError as exc:
        raise InvalidRequest(str(exc)) from exc


def answer(message: Message, status: int = 200) -> Response:
    return Response(status, message.encode())
