"""The first frames of the WebSockets: an exec stream's `start`, a terminal's `start` / `connect`, `resize`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from wrenn_server.proto.limits import MAX_TERMINAL_SIZE

from .common import Request

DEFAULT_SHELL = "/bin/bash"
DEFAULT_COLS, DEFAULT_ROWS = 80, 24

TerminalSize = Annotated[int, Field(ge=0, le=MAX_TERMINAL_SIZE)]


class ExecStart(Request):
    type: Literal["start"]
    cmd: str = Field(min_length=1)
    args: list[str] | None = None


class PtyStart(Request):
    """A new program on a terminal; absent or empty fields take the defaults."""

    cmd: str | None = Field(None, description=f"Program (default `{DEFAULT_SHELL}`).")
    args: list[str] | None = None
    cols: TerminalSize | None = Field(None, description=f"Columns (0 or absent: {DEFAULT_COLS}).")
    rows: TerminalSize | None = Field(None, description=f"Rows (0 or absent: {DEFAULT_ROWS}).")
    envs: dict[str, str] | None = None
    cwd: str | None = None
    user: str | None = None


class PtyConnect(Request):
    tag: str = Field(min_length=1)


class Resize(Request):
    cols: int = Field(gt=0, le=MAX_TERMINAL_SIZE)
    rows: int = Field(gt=0, le=MAX_TERMINAL_SIZE)
