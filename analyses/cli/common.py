"""Shared helpers of the ``monet-interp`` subcommands: the user-facing error and argparse types."""

from __future__ import annotations

import argparse


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit code 2."""


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse turns the error into a usage message, exit 2)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


__all__ = ["CliError", "positive_int"]
