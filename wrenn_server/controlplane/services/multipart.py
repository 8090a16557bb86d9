"""Incremental multipart/form-data reading: the body is parsed as it arrives, never held whole."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from ..errors import InvalidRequest


@dataclass(frozen=True)
class PartStart:
    name: str
    filename: str | None


@dataclass(frozen=True)
class PartData:
    data: bytes


@dataclass(frozen=True)
class PartEnd:
    pass


Event = PartStart | PartData | PartEnd


def boundary_of(content_type: str | None) -> bytes:
    if not content_type:
        raise InvalidRequest("expected a multipart/form-data body")
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise InvalidRequest("expected a multipart/form-data body with a boundary")
    return boundary


class _Collector:
    """Turns python-multipart's callbacks into a list of events per fed chunk."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""
        self.finished = False

    def end(self) -> None:
        self.finished = True

    def part_begin(self) -> None:
        self._headers = {}

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        self.events.append(
            PartStart(name, filename.decode("utf-8", "replace") if filename is not None else None)
        )

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if end > start:
            self.events.append(PartData(data[start:end]))

    def part_end(self) -> None:
        self.events.append(PartEnd())


async def read_parts(body: AsyncIterator[bytes], boundary: bytes) -> AsyncIterator[Event]:
    """Yield part boundaries and data slices as the body streams in."""
    collector = _Collector()
    parser = MultipartParser(
        boundary,
        callbacks={
            "on_part_begin": collector.part_begin,
            "on_header_field": collector.header_field,
            "on_header_value": collector.header_value,
            "on_header_end": collector.header_end,
            "on_headers_finished": collector.headers_finished,
            "on_part_data": collector.part_data,
            "on_part_end": collector.part_end,
            "on_end": collector.end,
        },
    )
    async for chunk in body:
        if not chunk:
            continue
        try:
            parser.write(chunk)
        except MultipartParseError as exc:
            raise InvalidRequest(f"malformed multipart body: {exc}") from exc
        events, collector.events = collector.events, []
        for event in events:
            yield event
    try:
        parser.finalize()
    except MultipartParseError as exc:
        raise InvalidRequest(f"malformed multipart body: {exc}") from exc
    for event in collector.events:
        yield event
    if not collector.finished:
        raise InvalidRequest("truncated multipart body")
