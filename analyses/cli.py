"""The ``monet-interp`` command line (an application on top of the core and the analyses; the
core library never imports it).

Each subcommand lives beside the code it drives and registers itself here with a
``register_cli(subparsers)`` function; bad arguments end with a clear message and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that contribute subcommands (each has register_cli(subparsers)).
SUBCOMMAND_MODULES = (
    "monet_interp.data.corpus",
    "monet_interp.training.trainer",
    "monet_interp.analyses.stats_cli",
    "monet_interp.analyses.report_cli",
    "monet_interp.analyses.edit_cli",
    "monet_interp.analyses.unlearning_cli",
    "monet_interp.analyses.steering_cli",
    "monet_interp.analyses.main_report",
)


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit code 2."""


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse turns the error into a usage message, exit 2)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _demo(args: argparse.Namespace) -> None:
    import torch

    from monet_interp import HookedMONET

    model = HookedMONET.from_pretrained(args.model)
    cfg = model.cfg
    print(f"model: {args.model} ({cfg.moe_decompose}, {cfg.num_hidden_layers} layers, d={cfg.hidden_size}, "
          f"E={cfg.moe_experts} -> {cfg.moe_experts ** 2:,} experts per routing group, {cfg.moe_heads} heads, "
          f"{cfg.num_routers} routing groups, {sum(p.numel() for p in model.parameters()):,} parameters)")
    tokens = model.to_tokens(args.text)
    with torch.no_grad():
        loss, cache = model.run_with_cache(tokens, return_type="loss",
                                           names_filter=lambda n: "hook_g_" in n)
    print(f"text: {args.text!r} -> {tokens.shape[1]} tokens, next-token loss {loss.item():.3f} nats")
    strs = model.to_str_tokens(tokens)
    for group in range(cfg.num_routers):
        layer = cfg.layers_of_group(group)[0]
        g1 = cache[f"blocks.{layer}.moe.hook_g_row"][0]
        g2 = cache[f"blocks.{layer}.moe.hook_g_col"][0]
        kept1 = (g1 > 0).sum(-1).float().mean().item()
        kept2 = (g2 > 0).sum(-1).float().mean().item()
        print(f"routing group {group} (layers {cfg.layers_of_group(group)}): kept per head: "
              f"{kept1:.1f} rows i, {kept2:.1f} columns j")
        # The strongest expert (i, j) per token, summed over heads: sum_h g1[h,i] g2[h,j].
        for pos, text in list(enumerate(strs))[: args.show_tokens]:
            score = torch.einsum("hi,hj->ij", g1[pos], g2[pos])
            flat = int(score.argmax())
            i, j = divmod(flat, cfg.moe_experts)
            print(f"  {text!r:>12}  top expert (i={i}, j={j}) flat id {flat}, routing score {score.max():.3f}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="monet-interp", description=(
        "See, delete and steer the experts of MONET language models."))
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = subparsers.add_parser("demo", help="load a model, run with cache, print routing facts")
    demo.add_argument("--model", default="monet-vd-tiny", help="embedded name, checkpoint folder or hub id")
    demo.add_argument("--text", default="def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1)")
    demo.add_argument("--show-tokens", type=int, default=8)
    demo.set_defaults(func=_demo)
    for module_name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:  # a part not installed in this build
            if err.name and module_name.startswith(err.name):
                continue
            raise
        module.register_cli(subparsers)
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


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: subcommands raise the CliError of
    # monet_interp.analyses.cli, which a second copy of this module would not catch.
    from monet_interp.analyses.cli import main as package_main

    sys.exit(package_main())
