"""``monet-interp stats``: routing statistics of every expert over a labelled corpus.

    monet-interp stats --model monet-vd-tiny --corpus data/corpus --out runs/stats
    monet-interp stats --model PATH --corpus texts/ --out runs/stats --tokens-per-label 20000 --split test

Writes the statistics (``RoutingStats.save``: reload with ``RoutingStats.load(OUT, model=...,
corpus=...)``), ``experts.csv`` (label metrics of every expert: top label, 2x rule, entropy,
specialisation ratio, AUROC) and ``specialised_per_label.csv``, then prints a summary: experts
routed per group, experts passing the 2x rule per label and the most specialised expert of each
label. ``--corpus`` is a built corpus or a plain-text folder ``<label>/*.txt``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from monet_interp.analyses import report as R
from monet_interp.analyses.cli.common import CliError, positive_int


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("stats", help="routing statistics of every expert over a labelled corpus",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="monet-vd-tiny", help="embedded name, checkpoint folder or hub id")
    parser.add_argument("--corpus", required=True, help="built corpus folder, or a folder of <label>/*.txt")
    parser.add_argument("--out", required=True, help="output folder (statistics, experts.csv)")
    parser.add_argument("--split", default=None, help="corpus split (default: val, held out from training)")
    parser.add_argument("--labels", nargs="+", help="corpus labels to use (default all)")
    parser.add_argument("--tokens-per-label", type=positive_int, default=6000,
                        help="document tokens per label, documents in corpus order (default 6,000)")
    parser.add_argument("--seq-len", type=positive_int, default=None,
                        help="window length in tokens (default: 128, or the model's context if shorter)")
    parser.add_argument("--top-k", type=int, default=16, help="top contexts kept per expert (0: none)")
    parser.add_argument("--fire-threshold", type=float, default=R.DEFAULT_FIRE_THRESHOLD,
                        help="an expert fires on a token when its score exceeds this (default 0.01)")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--show", type=int, default=10, help="labels shown in the printed summary (default 10)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run_stats_command)
    return parser


def run_stats_command(args: argparse.Namespace) -> int:
    from monet_interp import HookedMONET
    from monet_interp.analyses.monosemanticity import expert_table, specialisation_summary
    from monet_interp.data import CorpusSpecError, open_corpus
    from monet_interp.stats import compute_routing_stats

    if args.top_k < 0:
        raise CliError(f"--top-k must be >= 0, got {args.top_k}")
    if args.fire_threshold < 0:
        raise CliError(f"--fire-threshold must be >= 0, got {args.fire_threshold}")
    started = time.perf_counter()
    model = HookedMONET.from_pretrained(args.model)
    seq_len = args.seq_len or min(128, model.cfg.max_position_embeddings)
    if seq_len > model.cfg.max_position_embeddings:
        raise CliError(f"--seq-len {seq_len} exceeds the model's max_position_embeddings="
                       f"{model.cfg.max_position_embeddings}")
    try:
        corpus = open_corpus(args.corpus, model, verify=False)
        split = R.resolve_split(corpus, args.split)
        R.check_labels(corpus, args.labels)
    except (R.ReportError, CorpusSpecError) as err:
        raise CliError(str(err)) from None
    stats = compute_routing_stats(model, corpus, split=split, labels=args.labels,
                                  max_tokens_per_label=args.tokens_per_label, seq_len=seq_len,
                                  batch_size=args.batch_size, top_k=args.top_k, fire_threshold=args.fire_threshold,
                                  doc_max=True, progress=not args.no_progress)
    out = Path(args.out)
    stats.save(out)
    experts = expert_table(stats)
    experts.to_csv(out / "experts.csv", index=False)
    per_label = specialisation_summary(experts, by=("group",))
    per_label.to_csv(out / "specialised_per_label.csv", index=False)
    print(summarise(stats, experts, show=args.show))
    print(f"wrote {out} ({time.perf_counter() - started:.1f} s): RoutingStats, experts.csv, "
          f"specialised_per_label.csv")
    return 0


def summarise(stats: Any, experts: Any, show: int = 10) -> str:
    """A plain-text summary of routing statistics and their expert table."""
    n_pairs = stats.n_experts ** 2
    lines = [f"{stats.total_tokens:,} tokens over {len(stats.labels)} labels, {stats.n_groups} routing groups "
             f"x {n_pairs:,} experts"]
    for g in range(stats.n_groups):
        rows = experts[experts["group"] == g]
        lines.append(f"group {g}: routed (active) {rows['active'].mean():.1%}, passing the 2x rule "
                     f"{rows['specialised'].mean():.2%}")
    specialised = experts[experts["specialised"]]
    counts = specialised.groupby("label").size().sort_values(ascending=False)
    lines.append("experts passing the 2x rule per label (all groups): " + (
        ", ".join(f"{label} {n}" for label, n in counts.head(show).items()) or "none"))
    if len(specialised):
        best = specialised.sort_values(["spec_ratio", "r_top"], ascending=False).groupby("label").head(1)
        lines.append("most specialised expert per label (group, i, j: specialisation ratio, mean score):")
        for _, row in best.head(show).iterrows():
            lines.append(f"  {row['label']:>20}  ({int(row['group'])}, {int(row['i'])}, {int(row['j'])}): "
                         f"{row['spec_ratio']:.2f}, {row['r_top']:.4f}")
    return "\n".join(lines)


__all__ = ["register", "run_stats_command", "summarise"]
