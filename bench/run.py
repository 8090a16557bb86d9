"""Every benchmark of the platform, one JSON document (`make bench`)."""

from __future__ import annotations

from . import create_latency, exec_latency, interactive, microvm, pause_latency
from .common import emit

if __name__ == "__main__":
    emit(
        {
            **exec_latency.measure(),
            **create_latency.measure(),
            **interactive.measure(),
            **pause_latency.measure(),
            **microvm.measure(),
        }
    )
