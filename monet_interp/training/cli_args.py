"""The ``train`` command's arguments, shared by ``python -m monet_interp.training`` (here, in the
core) and ``monet-interp train`` (``monet_interp.analyses.cli.train``): every TrainConfig knob as
a flag, ``run_train(args)`` runs it. Long runs resume with these flags: keep them stable.
"""

from __future__ import annotations

import argparse
import sys

from monet_interp.training import trainer
from monet_interp.training.losses import BALANCE_TARGETS
from monet_interp.training.trainer import MODEL_KINDS, TrainConfig

_CLI_FIELDS = ("steps", "batch_size", "seq_len", "lr", "min_lr_ratio", "warmup_steps", "weight_decay", "grad_clip",
               "aux_weight", "unif_probs", "z_loss_weight", "balance_rate", "balance_target", "routing_warmup_steps",
               "label_power", "seed", "d_model", "n_layers", "n_heads", "moe_experts", "moe_heads", "moe_dim",
               "moe_topk", "moe_groups", "routing", "d_mlp", "max_position_embeddings", "eval_every",
               "eval_batches", "eval_batch_size", "test_windows", "health_batches", "checkpoint_every", "device",
               "precision", "threads", "stop_after", "tokenizer")

# add_parser keyword arguments of the ``train`` subcommand
TRAIN_PARSER = dict(
    help="train a MONET (vd, hd, top1) or dense baseline model on a corpus",
    description="Train a model with L = L_LM + lambda (L_unif + L_amb); checkpoints are resumable "
                "(--resume) and loadable with HookedMONET.from_pretrained / HookedDense.from_pretrained.")


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add every ``train`` flag to ``parser`` and set ``func`` to :func:`run_train`."""
    defaults = TrainConfig()
    parser.add_argument("--model", choices=MODEL_KINDS, default="vd")
    parser.add_argument("--corpus", default=defaults.corpus, help="corpus directory (monet-interp corpus build)")
    parser.add_argument("--out", required=True, help="output directory (final model + checkpoint/)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--labels", default=None, help="comma-separated labels to train on (default: all)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    for name in _CLI_FIELDS:
        default = getattr(defaults, name)
        kind = {"routing": str, "unif_probs": str, "device": str, "precision": str, "tokenizer": str, "d_mlp": int,
                "threads": int, "stop_after": int, "balance_target": str}.get(name, type(default))
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=default,
                            choices={"routing": ("threshold", "topk", "top1"), "unif_probs": ("routed", "softmax"),
                                     "precision": ("auto", "float32", "bfloat16"),
                                     "balance_target": BALANCE_TARGETS}.get(name),
                            help=f"(default: {default})")
    parser.set_defaults(func=run_train)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed ``train`` arguments."""
    fields = {name: getattr(args, name) for name in _CLI_FIELDS}
    labels = [x.strip() for x in args.labels.split(",") if x.strip()] if args.labels else None
    return TrainConfig(model=args.model, corpus=args.corpus, out=args.out, resume=args.resume, labels=labels,
                       progress=not args.quiet, **fields)


def parse_train_args(argv: list[str], prog: str = "python -m monet_interp.training") -> argparse.Namespace:
    """Parse ``[train] ARGS`` as the ``train`` command does."""
    argv = list(argv)
    if argv[:1] != ["train"]:
        argv = ["train", *argv]
    parser = argparse.ArgumentParser(prog=prog)
    add_train_arguments(parser.add_subparsers(dest="command").add_parser("train", **TRAIN_PARSER))
    return parser.parse_args(argv)


def run_train(args: argparse.Namespace) -> int:
    """Train with the TrainConfig of parsed ``train`` arguments."""
    config = config_from_args(args)
    result = trainer.train(config)
    if not result.finished:
        print(f"stopped after step {config.stop_after}; continue with --resume")
    else:
        print(f"wrote {result.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m monet_interp.training [train] ARGS`` (the same as ``monet-interp train ARGS``)."""
    args = parse_train_args(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except ValueError as err:  # includes ConfigError and CheckpointError
        print(f"train: error: {err}", file=sys.stderr)
        return 2


__all__ = ["TRAIN_PARSER", "add_train_arguments", "config_from_args", "main", "parse_train_args", "run_train"]
