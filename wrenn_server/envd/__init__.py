"""envd: the guest agent of a Wrenn capsule (Python 3.11 standard library only; see docs/envd-protocol.md)."""

__version__ = "0.2.0"  # envd's own; reported in /health, and shown in every capsule's metadata
