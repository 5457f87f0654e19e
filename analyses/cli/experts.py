"""``monet-interp experts``: build the expert activation report (HTML) for chosen experts.

    monet-interp experts --model NAME --corpus DIR --out DIR [--experts g:i:j ...] [--top-per-label N]

``--corpus`` is a built corpus (``monet-interp corpus build``; the held-out "test" split is used
unless ``--split`` says otherwise) or a plain-text folder ``<label>/*.txt``. Without
``--experts`` the report covers the ``--top-per-label`` experts most specialised in each label
(2x rule, firing on at least ``--min-fires`` tokens). Open ``OUT/index.html`` in a browser; the
pages work offline from file://.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from monet_interp.analyses import report as R
from monet_interp.analyses.cli.common import CliError, positive_int
from monet_interp.stats.stream import special_token_ids


def _expert(text: str) -> R.ExpertRef:
    try:
        return R.ExpertRef.parse(text)
    except R.ReportError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "experts", help="build the expert activation report (HTML dashboards) for chosen experts",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="monet-vd-tiny", help="embedded name, checkpoint folder or hub id")
    parser.add_argument("--corpus", required=True, help="built corpus folder, or a folder of <label>/*.txt")
    parser.add_argument("--out", required=True, help="output folder (index.html, experts/, assets/)")
    parser.add_argument("--experts", nargs="+", type=_expert, metavar="G:I:J",
                        help="experts to report (routing group:i:j); default: the top experts per label")
    parser.add_argument("--top-per-label", type=positive_int, default=5, metavar="N",
                        help="without --experts: the N most specialised experts per label (default 5)")
    parser.add_argument("--min-fires", type=int, default=20,
                        help="without --experts: only experts firing on at least this many tokens (default 20)")
    parser.add_argument("--groups", nargs="+", type=int, help="without --experts: routing groups to search (default all)")
    parser.add_argument("--split", default=None, help="corpus split (default: test, the held-out split)")
    parser.add_argument("--labels", nargs="+", help="corpus labels to use (default all)")
    parser.add_argument("--max-tokens-per-label", type=positive_int, default=50_000,
                        help="document tokens per label, documents in corpus order (default 50,000)")
    parser.add_argument("--fire-threshold", type=float, default=R.DEFAULT_FIRE_THRESHOLD,
                        help="an expert fires on a token when its score exceeds this (default 0.01, as the "
                             "routing statistics)")
    parser.add_argument("--routing-stats", metavar="DIR",
                        help="without --experts: choose experts from saved RoutingStats instead of computing them")
    parser.add_argument("--ctx-len", type=positive_int, default=None,
                        help="window length in tokens, bos included (default: 128, or the model's context if shorter)")
    parser.add_argument("--top-k", type=positive_int, default=R.DEFAULT_TOP_K, help="top contexts per expert")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--device", default=None, help="torch device (default cpu)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inline-plotly", action="store_true",
                        help="embed plotly.js in every page instead of writing assets/plotly.min.js once")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run_experts_command)
    return parser


def run_experts_command(args: argparse.Namespace) -> None:
    from monet_interp import HookedMONET
    from monet_interp.data import open_corpus

    progress = not args.no_progress
    started = time.time()
    model = HookedMONET.from_pretrained(args.model, device=args.device)
    cfg = model.cfg
    if args.ctx_len is None:
        args.ctx_len = min(128, cfg.max_position_embeddings)
    if args.ctx_len > cfg.max_position_embeddings:
        raise CliError(f"--ctx-len {args.ctx_len} exceeds the model's max_position_embeddings={cfg.max_position_embeddings}")
    if args.fire_threshold < 0:
        raise CliError(f"--fire-threshold must be >= 0, got {args.fire_threshold}")
    if args.experts:
        try:
            experts = R.check_experts(cfg, args.experts)
        except R.ReportError as err:
            raise CliError(str(err)) from None
    corpus = open_corpus(args.corpus, model, verify=False)
    docs, windows, split = R.plan_report_windows(model, corpus, split=args.split, labels=args.labels,
                                                 ctx_len=args.ctx_len, max_tokens_per_label=args.max_tokens_per_label)
    specials = set(special_token_ids(model))
    n_tokens = sum(1 for w in windows for t in w.tokens if t not in specials)
    labels = sorted({d.label for d in docs})
    print(f"corpus: {len(docs)} documents ({split}), {len(windows)} windows, {n_tokens:,} counted tokens, "
          f"labels {', '.join(labels)}", file=sys.stderr)
    selection = "chosen on the command line"
    if not args.experts:
        groups = args.groups if args.groups else list(range(cfg.num_routers))
        bad = [g for g in groups if not 0 <= g < cfg.num_routers]
        if bad:
            raise CliError(f"--groups {bad} out of range (the model has {cfg.num_routers} routing groups)")
        if args.routing_stats:
            from monet_interp.stats import RoutingStats

            stats = RoutingStats.load(args.routing_stats, model=model, corpus=corpus)
        else:
            stats = R.routing_stats_for(model, corpus, split=split, labels=args.labels, ctx_len=args.ctx_len,
                                        max_tokens_per_label=args.max_tokens_per_label,
                                        fire_threshold=args.fire_threshold, batch_size=args.batch_size,
                                        progress=progress)
        per_label = R.select_top_per_label(stats, args.top_per_label, min_fires=args.min_fires, groups=groups)
        experts = sorted({ref for refs in per_label.values() for ref in refs})
        for label, refs in per_label.items():
            print(f"  {label}: {', '.join(str(r) for r in refs) or 'no expert passes the 2x rule'}", file=sys.stderr)
        if not experts:
            raise CliError(f"no expert passes the 2x rule with >= {args.min_fires} firing tokens on this corpus; "
                         f"lower --min-fires, add documents, or pass --experts")
        selection = f"top {args.top_per_label} per label (2x rule, >= {args.min_fires} firing tokens)"
    pages = R.build_report_data(model, windows, experts, documents=docs, fire_threshold=args.fire_threshold,
                                top_k=args.top_k, batch_size=args.batch_size, seed=args.seed, progress=progress)
    meta = {
        "model": str(args.model),
        "facts": {"experts": len(pages), "documents": len(docs), "windows": len(windows), "tokens": n_tokens,
                  "labels": len(labels), "split": split, "ctx len": args.ctx_len,
                  "fire threshold": args.fire_threshold},
        "description": (f"Experts {selection}. Corpus {args.corpus}; labels: {', '.join(labels)}. "
                        f"Scores s(t) = sum_h g_row[t,h,i] g_col[t,h,j]; density = share of counted tokens "
                        f"(bos/eos excluded) with s > {args.fire_threshold}."),
        "settings": {k: ([str(e) for e in v] if k == "experts" and v else v) for k, v in vars(args).items()
                     if k != "func"},
    }
    index = R.write_report(args.out, pages, meta, inline_plotly=args.inline_plotly)
    print(f"wrote {len(pages)} expert pages in {time.time() - started:.1f}s: {index}")


__all__ = ["register", "run_experts_command"]
