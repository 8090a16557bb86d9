"""The envd wire contract: every message the host agent and envd exchange, typed (docs/envd-protocol.md).

Both sides import this module and nothing of each other: the host agent as `wrenn_server.proto.envd`, envd
from inside the guest, where the image builder installs this file at the same place in the package. So it
keeps to what envd runs on: Python 3.11 and its standard library.

A message is a frozen dataclass; `to_json()`/`from_json()` convert it to and from the JSON value on the wire,
`encode()`/`decode()` to and from bytes. Reading checks the shape (types, required fields) and raises
`MessageError` naming the field; rules about values (an absolute path, a known signal) stay with envd.
Unknown keys are ignored, so adding an optional field keeps the protocol version; anything a reader of
the previous version would misread (a new event type, a removed field, a changed meaning) takes a new one.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Self

# Bumped on every change a peer of the previous version would misread. envd reports it in the answers to
# /health, /init and /snapshot/resume; the host agent speaks exactly this one. An envd older than the
# versioned protocol answers /init with no body: protocol 0.
PROTOCOL_VERSION = 1
PORT = 49983  # envd listens here in every guest; never forwarded to a guest process


def default_pids_max(memory_mb: int) -> int:
    """The tasks (processes and threads) a guest of this size may run, enforced by envd's user cgroup. One per
    2 MiB, between 128 and 1024: under gVisor (ptrace) each guest process costs ~0.5 MiB and ~12 threads on
    the host beyond the guest's own memory, more while processes churn, and the sentry dies at 10,000 threads;
    the host's limits for the sandbox are sized from this one (see docs/containment.md)."""
    return max(128, min(memory_mb // 2, 1024))


class MessageError(ValueError):
    """A message that does not follow the contract; the text names the field."""


def _omitted(default: Any = None) -> Any:
    """A field left out of the JSON while it is None (an optional field of a request, say)."""
    return field(default=default, metadata={"omit_none": True})


def _named(key: str, default: Any = dataclasses.MISSING, omit_none: bool = False) -> Any:
    """A field whose JSON key differs from its Python name."""
    return field(default=default, metadata={"key": key, "omit_none": omit_none})


@dataclass(frozen=True)
class _Field:
    name: str
    key: str
    kind: Any  # without its `| None`: a null is handled before the value is read
    required: bool
    nullable: bool
    omit_none: bool


_LABELS: dict[Any, str] = {
    str: "a string", int: "an integer", float: "a number", bool: "a boolean", bytes: "base64 data",
}
_specs: dict[type, tuple[_Field, ...]] = {}


def _fields_of(cls: type) -> tuple[_Field, ...]:
    spec = _specs.get(cls)
    if spec is None:
        hints = typing.get_type_hints(cls)
        spec = tuple(
            _Field(
                f.name,
                f.metadata.get("key", f.name),
                _without_none(hints[f.name]),
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
                _without_none(hints[f.name]) is not hints[f.name],
                bool(f.metadata.get("omit_none")),
            )
            for f in dataclasses.fields(cls)
        )
        _specs[cls] = spec
    return spec


def _without_none(kind: Any) -> Any:
    if typing.get_origin(kind) in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(options) == 1:
            return options[0]
    return kind


def _label(kind: Any) -> str:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_label(a) for a in args if a is not type(None))
    if origin in (list, tuple):
        return f"a list of {_label(args[0]).split(' ', 1)[1]}s"
    if origin is dict:
        return f"an object of {_label(args[1]).split(' ', 1)[1]}s"
    if isinstance(kind, type) and issubclass(kind, StrEnum):
        return "one of: " + ", ".join(kind)
    if isinstance(kind, type) and issubclass(kind, Message):
        return "an object"
    return _LABELS.get(kind, str(kind))


def _read(kind: Any, value: Any, key: str) -> Any:
    """`value` as `kind`, or MessageError; None only where `kind` allows it."""
    if kind is str and isinstance(value, str):  # the common case first: this runs for every field of every call
        return value
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (types.UnionType, typing.Union):
        options = [a for a in args if a is not type(None)]
        if value is None and len(options) < len(args):
            return None
        if len(options) == 1:
            return _read(options[0], value, key)  # its own error says more (a nested message's, say)
        for option in options:
            try:
                return _read(option, value, key)
            except MessageError:
                pass
    elif (origin is dict and isinstance(value, dict)) or (origin in (list, tuple) and isinstance(value, list)):
        item_kind = args[-1]
        try:
            if isinstance(value, dict):
                return {str(k): _read(item_kind, v, key) for k, v in value.items()}
            items = [_read(item_kind, item, key) for item in value]
            return items if origin is list else tuple(items)
        except MessageError:
            if isinstance(item_kind, type) and issubclass(item_kind, Message):
                raise  # its own error names the field inside
    elif kind is bool or kind is str:
        if isinstance(value, kind):
            return value
    elif kind is int or kind is float:
        # bool is an int subclass, but `true` is never a valid count or pid.
        if isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool):
            return kind(value)
    elif kind is bytes:
        if isinstance(value, str):
            try:
                return base64.b64decode(value, validate=True)
            except binascii.Error:
                pass
    elif isinstance(kind, type) and issubclass(kind, StrEnum):
        try:
            return kind(value)
        except ValueError:
            pass
    elif isinstance(kind, type) and issubclass(kind, Message) and isinstance(value, dict):
        return kind.from_json(value)
    raise MessageError(f"'{key}' must be {_label(kind)}")


def _write(value: Any) -> Any:
    if isinstance(value, Message):
        return value.to_json()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, (list, tuple)):
        return [_write(item) for item in value]
    if isinstance(value, dict):
        return {k: _write(v) for k, v in value.items()}
    if isinstance(value, StrEnum):
        return value.value
    return value


@dataclass(frozen=True)
class Message:
    """A JSON object on the wire. Subclasses are frozen dataclasses whose field types say what is allowed."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in _fields_of(type(self)):
            value = getattr(self, f.name)
            if value is None and f.omit_none:
                continue
            out[f.key] = _write(value)
        return out

    @classmethod
    def from_json(cls, data: Any) -> Self:
        if not isinstance(data, dict):
            raise MessageError("body must be a JSON object")
        values: dict[str, Any] = {}
        for f in _fields_of(cls):
            raw = data.get(f.key)
            if raw is None:  # missing and null are the same: the default, None, or an error
                if f.required and f.nullable:
                    values[f.name] = None
                elif f.required:
                    raise MessageError(f"'{f.key}' is required")
                continue
            values[f.name] = _read(f.kind, raw, f.key)
        return cls(**values)

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Self:
        try:
            data = json.loads(raw) if raw.strip() else {}
        except (ValueError, UnicodeDecodeError) as exc:
            raise MessageError(f"body is not valid JSON: {exc}") from exc
        return cls.from_json(data)


# --- errors -----------------------------------------------------------------------------------------------


class ErrorCode(StrEnum):
    INVALID_REQUEST = "invalid_request"  # 400
    FORBIDDEN = "forbidden"  # 403
    NOT_FOUND = "not_found"  # 404
    CONFLICT = "conflict"  # 409
    TOO_LARGE = "too_large"  # 413
    INTERNAL_ERROR = "internal_error"  # 500
    TIMEOUT = "timeout"  # 504


@dataclass(frozen=True)
class ErrorBody(Message):
    """The body of every non-2xx answer."""

    code: str  # an ErrorCode; a str so that a code a later envd adds still reads
    message: str


# --- service ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello(Message):
    """Who answers: envd's own version and the protocol it speaks (/health, /init, /snapshot/resume)."""

    version: str
    protocol: int = 0

    @property
    def compatible(self) -> bool:
        return self.protocol == PROTOCOL_VERSION


@dataclass(frozen=True)
class InitRequest(Message):
    """The defaults every later process gets; a later /init replaces only what it names."""

    default_user: str | None = _named("defaultUser", None, omit_none=True)
    env_vars: dict[str, str] | None = _named("envVars", None, omit_none=True)
    default_workdir: str | None = _named("defaultWorkdir", None, omit_none=True)
    sandbox_id: str | None = _named("sandboxId", None, omit_none=True)


@dataclass(frozen=True)
class Metrics(Message):
    ts: int
    cpu_count: int
    cpu_used_pct: float
    mem_total: int
    mem_used: int
    disk_used: int
    disk_total: int


# --- processes --------------------------------------------------------------------------------------------


class Mode(StrEnum):
    BACKGROUND = "background"  # answer Started at once
    STREAM = "stream"  # answer the NDJSON events from start to end
    RUN = "run"  # wait, answer RunResult


class OutputKind(StrEnum):
    STDOUT = "stdout"
    STDERR = "stderr"
    PTY = "pty"


class EndReason(StrEnum):
    """Why a process ended, when envd knows better than its exit status (absent: it ended on its own, or by a
    signal someone sent it)."""

    OOM = "oom"  # killed (SIGKILL) because the capsule ran out of memory
    PIDS = "pids"  # killed (SIGKILL, with its whole session) for holding the capsule at its task limit


@dataclass(frozen=True)
class PtySize(Message):
    cols: int
    rows: int

    def __post_init__(self) -> None:
        if self.cols <= 0 or self.rows <= 0:
            raise MessageError("'cols' and 'rows' must be positive integers")


@dataclass(frozen=True)
class StartRequest(Message):
    cmd: str
    mode: Mode
    args: list[str] = field(default_factory=list)
    envs: dict[str, str] = field(default_factory=dict)
    cwd: str | None = _omitted()
    user: str | None = _omitted()
    tag: str | None = _omitted()
    stdin: bool = False
    pty: PtySize | None = _omitted()
    timeout_sec: float = 0.0  # run mode: SIGKILL and a 504 `timeout` after this long; 0 waits forever

    def __post_init__(self) -> None:
        if not self.cmd:
            raise MessageError("'cmd' is required")


@dataclass(frozen=True)
class Started(Message):
    pid: int
    tag: str | None = None


@dataclass(frozen=True)
class RunResult(Message):
    pid: int
    exit_code: int
    stdout: bytes
    stderr: bytes
    duration_ms: int
    reason: str | None = None  # an EndReason; a str so that a reason a later envd adds still reads

    def encode(self) -> bytes:
        # Base64 needs no JSON escaping, and json.dumps would spend most of a large answer's time scanning it.
        reason = b"" if self.reason is None else b',"reason":%s' % json.dumps(self.reason).encode()
        return b'{"pid":%d,"exit_code":%d,"stdout":"%s","stderr":"%s","duration_ms":%d%s}' % (
            self.pid, self.exit_code, base64.b64encode(self.stdout), base64.b64encode(self.stderr), self.duration_ms,
            reason,
        )


@dataclass(frozen=True)
class ProcessRef(Message):
    """A process named by its pid or its tag (the tag wins when both are given)."""

    pid: int | None = _omitted()
    tag: str | None = _omitted()


@dataclass(frozen=True)
class InputRequest(ProcessRef):
    data: bytes = field(default=b"", kw_only=True)


@dataclass(frozen=True)
class SignalRequest(ProcessRef):
    signal: str | int = field(kw_only=True)  # a name (SIGTERM, TERM) or a number


@dataclass(frozen=True)
class ResizeRequest(ProcessRef):
    cols: int = field(kw_only=True)
    rows: int = field(kw_only=True)


@dataclass(frozen=True)
class ProcessEntry(Message):
    pid: int
    tag: str | None
    cmd: str
    args: list[str]
    envs: dict[str, str]
    cwd: str
    pty: bool
    running: bool = True


@dataclass(frozen=True)
class ProcessList(Message):
    processes: list[ProcessEntry]


# Events of a process stream, one JSON object per line, told apart by "type".


@dataclass(frozen=True)
class StartEvent(Message):
    TYPE: ClassVar[str] = "start"
    pid: int
    tag: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"type": self.TYPE, **super().to_json()}


@dataclass(frozen=True)
class OutputEvent(Message):
    kind: OutputKind = _named("type")
    data: bytes = _named("data")

    def encode(self) -> bytes:
        return b'{"type":"%s","data":"%s"}' % (self.kind.value.encode(), base64.b64encode(self.data))


@dataclass(frozen=True)
class EndEvent(Message):
    TYPE: ClassVar[str] = "end"
    exit_code: int  # the exit status, or 128 + the signal that killed it
    signal: int | None = None
    reason: str | None = _omitted()  # an EndReason, as in RunResult

    def to_json(self) -> dict[str, Any]:
        return {"type": self.TYPE, **super().to_json()}


@dataclass(frozen=True)
class KeepAlive(Message):
    """Sent every 15 s while nothing else happens."""

    TYPE: ClassVar[str] = "keepalive"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.TYPE}


Event = StartEvent | OutputEvent | EndEvent | KeepAlive
_EVENTS: dict[str, type[StartEvent | EndEvent | KeepAlive]] = {e.TYPE: e for e in (StartEvent, EndEvent, KeepAlive)}


def event_line(event: Event) -> bytes:
    return event.encode() + b"\n"


def parse_event(line: bytes) -> Event:
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MessageError(f"event is not valid JSON: {exc}") from exc
    kind = data.get("type") if isinstance(data, dict) else None
    if kind in set(OutputKind):
        return OutputEvent.from_json(data)
    if kind not in _EVENTS:
        raise MessageError(f"unknown event type {kind!r}")
    return _EVENTS[kind].from_json(data)


# --- filesystem -------------------------------------------------------------------------------------------


class EntryType(StrEnum):
    FILE = "file"
    DIRECTORY = "directory"
    SYMLINK = "symlink"


@dataclass(frozen=True)
class EntryInfo(Message):
    name: str
    path: str
    type: EntryType
    size: int
    mode: int  # permission bits
    permissions: str  # as ls shows them: -rwxr-xr-x
    owner: str
    group: str
    modified_at: int  # unix seconds
    symlink_target: str | None = _omitted()


@dataclass(frozen=True)
class PathRequest(Message):
    path: str

    def __post_init__(self) -> None:
        if not self.path:
            raise MessageError("'path' is required")


@dataclass(frozen=True)
class ListRequest(PathRequest):
    depth: int = 1  # levels below `path`; 0 means 1


@dataclass(frozen=True)
class MoveRequest(Message):
    source: str
    destination: str


@dataclass(frozen=True)
class EntryList(Message):
    entries: list[EntryInfo]


@dataclass(frozen=True)
class EntryAnswer(Message):
    entry: EntryInfo
