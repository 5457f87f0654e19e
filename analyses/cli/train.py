"""``monet-interp train``: train a MONET or dense baseline model (flags: monet_interp.training.cli_args,
shared with ``python -m monet_interp.training``)."""

from __future__ import annotations

import argparse
from typing import Any

from monet_interp.training.cli_args import TRAIN_PARSER, add_train_arguments


def register(subparsers: Any) -> argparse.ArgumentParser:
    return add_train_arguments(subparsers.add_parser("train", **TRAIN_PARSER))


__all__ = ["register"]
