"""Limits the control plane and the host agent both check, declared once.

The control plane states them on its API schemas (so `/openapi.json` shows them and bad input is a 400
before any RPC); the host agent checks them again on every request, as any caller of its RPCs may send anything.
"""

from __future__ import annotations

from typing import Literal, get_args

Signal = Literal["SIGKILL", "SIGTERM"]
SIGNALS: tuple[str, ...] = get_args(Signal)
DEFAULT_SIGNAL: Signal = "SIGKILL"

MIN_MEMORY_MB = 128  # no guest (nor gVisor's own kernel) starts in less
MAX_INT32 = 2**31 - 1  # the proto's int32 and uint32 fields take no more
MAX_TERMINAL_SIZE = 65535  # a terminal's rows and columns are unsigned shorts
