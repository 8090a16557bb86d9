"""Quiet, structured logs: one `key=value` line per record; access logs off unless asked for."""

from __future__ import annotations

import logging
import sys


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        line = (
            f"ts={self.formatTime(record, '%Y-%m-%dT%H:%M:%S')} level={record.levelname.lower()} "
            f"logger={record.name} msg={record.message!r}"
        )
        if record.exc_info:
            line += " exc=" + repr(self.formatException(record.exc_info))
        return line


def configure_logging(level: str) -> None:
    """Route the control plane's loggers to stderr at `level`; uvicorn's access log only on debug."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    logger = logging.getLogger("wrenn_server.controlplane")
    if not any(getattr(h, "_wrenn", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(KeyValueFormatter())
        handler._wrenn = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(numeric)
    logging.getLogger("uvicorn.access").setLevel(
        logging.INFO if numeric <= logging.DEBUG else logging.WARNING
    )
