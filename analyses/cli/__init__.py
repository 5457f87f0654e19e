"""The ``monet-interp`` command line (an application on top of the core and the analyses; the
core library never imports it).

Convention: one module per subcommand in this package (``analyses/cli/<name>.py``), each with a
``register(subparsers)`` function that adds its parser and sets ``func``; ``SUBCOMMAND_MODULES``
lists them in help order. Shared helpers (``CliError``, ``positive_int``) live in
:mod:`monet_interp.analyses.cli.common`. Bad arguments end with a clear message and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from monet_interp.analyses.cli.common import CliError

# One module per subcommand, in help order; each has register(subparsers).
SUBCOMMAND_MODULES = tuple(f"monet_interp.analyses.cli.{name}" for name in (
    "demo", "corpus", "train", "stats", "experts", "edit", "unlearning", "steering", "report"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="monet-interp", description=(
        "See, delete and steer the experts of MONET language models."))
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from monet_interp.data.corpus import CorpusError

    try:
        code = args.func(args)
    except (CliError, CorpusError, FileNotFoundError, ValueError) as err:  # ConfigError etc. are ValueErrors
        print(f"monet-interp {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return code if isinstance(code, int) else 0


__all__ = ["SUBCOMMAND_MODULES", "build_parser", "main"]
