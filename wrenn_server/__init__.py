"""Wrenn: a self-hostable sandbox platform for AI agents."""

__version__ = "0.1.0"
