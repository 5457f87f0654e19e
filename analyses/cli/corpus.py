"""``monet-interp corpus build``: collect, clean, split and tokenise the offline corpus
(:func:`monet_interp.data.corpus.build_corpus`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from monet_interp.data import sources as S
from monet_interp.data import tokenizer_training as T
from monet_interp.data.corpus import (
    DEFAULT_MAX_BYTES_PER_LABEL,
    DEFAULT_OUT_DIR,
    DEFAULT_TEST_FRACTION,
    DEFAULT_VAL_FRACTION,
    CorpusError,
    build_corpus,
    format_summary,
    resolve_labels,
)


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``corpus build`` to an argparse subparsers object. The chosen action is stored in
    ``args.func``; call ``args.func(args)`` (returns an exit code)."""
    corpus = subparsers.add_parser("corpus", help="build the offline training/evaluation corpus",
                                   description="Build a labelled, tokenised corpus from offline sources.")
    sub = corpus.add_subparsers(dest="corpus_action", metavar="ACTION")
    sub.required = True
    b = sub.add_parser("build", help="collect, clean, split and tokenise the corpus",
                       description="Collect, clean, deduplicate, split (train/val/test) and tokenise text for each "
                                   "label. Optional sources: run scripts/install_corpus_sources.sh as root first.")
    b.add_argument("--out", default=DEFAULT_OUT_DIR, help=f"output directory (default: {DEFAULT_OUT_DIR})")
    b.add_argument("--labels", default=None,
                   help="comma-separated labels, or 'code', 'natural', 'all' (default: the default set: "
                        + ", ".join(S.DEFAULT_LABELS) + "; extra: "
                        + ", ".join(x for x in S.LABELS if x not in S.DEFAULT_LABELS) + ")")
    b.add_argument("--max-mb-per-label", type=float, default=DEFAULT_MAX_BYTES_PER_LABEL / 1e6,
                   help=f"cap on cleaned text per label in MB (default: {DEFAULT_MAX_BYTES_PER_LABEL / 1e6})")
    b.add_argument("--tokenizer", default=None, help="tokenizer.json to encode with (default: the committed asset)")
    b.add_argument("--train-tokenizer", action="store_true", help="train a new byte-level BPE on this corpus")
    b.add_argument("--vocab-size", type=int, default=T.DEFAULT_VOCAB_SIZE,
                   help=f"vocabulary size when training (default: {T.DEFAULT_VOCAB_SIZE})")
    b.add_argument("--save-tokenizer", default=None, help="also write the tokenizer used to this path")
    b.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    b.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION)
    b.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION)
    b.add_argument("--sources-root", default=None, help="re-root every system location under this directory")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.set_defaults(func=lambda args: _cmd_build(args, b))
    return corpus


def _cmd_build(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if not args.max_mb_per_label > 0:
        parser.error(f"--max-mb-per-label must be positive, got {args.max_mb_per_label}")
    max_bytes = int(args.max_mb_per_label * 1e6)
    if max_bytes < S.MIN_DOC_BYTES:
        parser.error(f"--max-mb-per-label is too small ({max_bytes} bytes)")
    if args.tokenizer is not None and args.train_tokenizer:
        parser.error("--tokenizer and --train-tokenizer are mutually exclusive")
    if args.tokenizer is not None and not Path(args.tokenizer).is_file():
        parser.error(f"--tokenizer: no such file: {args.tokenizer}")
    if not (T.MIN_VOCAB_SIZE <= args.vocab_size <= 1 << 20):
        parser.error(f"--vocab-size must be between {T.MIN_VOCAB_SIZE} and {1 << 20}, got {args.vocab_size}")
    if args.vocab_size != T.DEFAULT_VOCAB_SIZE and args.tokenizer is not None:
        parser.error("--vocab-size applies to a trained tokenizer, not to --tokenizer")
    if not (0 <= args.val_fraction < 1 and 0 <= args.test_fraction < 1 and args.val_fraction + args.test_fraction < 1):
        parser.error("--val-fraction and --test-fraction must be in [0, 1) and sum to less than 1")
    if args.sources_root is not None and not Path(args.sources_root).is_dir():
        parser.error(f"--sources-root: not a directory: {args.sources_root}")
    try:
        labels = resolve_labels(args.labels)
    except ValueError as e:
        parser.error(str(e))
    try:
        manifest = build_corpus(
            args.out, labels=labels, sources_root=args.sources_root, tokenizer=args.tokenizer,
            train_tokenizer=args.train_tokenizer, vocab_size=args.vocab_size, save_tokenizer=args.save_tokenizer,
            max_bytes_per_label=max_bytes, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
            seed=args.seed, progress=not args.quiet)
    except CorpusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_summary(manifest))
    print(f"wrote {args.out}")
    return 0


__all__ = ["register"]
