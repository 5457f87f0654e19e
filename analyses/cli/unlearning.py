"""``monet-interp unlearn``: forget labels by deleting MONET experts, against fair baselines.

    monet-interp unlearn --forget python,news_sport --model monet-vd-tiny --corpus data/corpus --out runs/unlearning
    python -m monet_interp.analyses.cli.unlearning --forget python ...   (same, without the main parser)
    monet-interp unlearn --forget all --model monet-vd-tiny --top1-model monet-top1-tiny \\
        --dense-model dense-tiny --corpus data/corpus --out runs/unlearning

Writes summary.csv, points.csv, curves.csv, clean.csv, overview.csv, selections.json,
settings.json, unlearning.html and README_table.md into --out, and prints the overview and the
Markdown tables (dTarget / dOthers per forgotten label and method).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from monet_interp.analyses.unlearning import RULES, STATISTICS, UnlearningConfig
from monet_interp.units import HEAD_MODES, SCOPES


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from err


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``unlearn`` subcommand (its action is ``args.func(args)``)."""
    D = UnlearningConfig()  # the defaults of run_unlearning
    p = subparsers.add_parser("unlearn", help="forget labels by deleting experts; compare with dense/SAE baselines",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--forget", default="all", help="labels to forget: comma-separated names, 'all', 'code', 'natural'")
    p.add_argument("--labels", default=None, help="labels measured and used as rivals/retain set (default: all)")
    p.add_argument("--model", default="monet-vd-tiny", help="MONET model (embedded name, folder or hub id)")
    p.add_argument("--top1-model", default=None, help="a top-1 MONET model, forgotten with the 2x rule")
    p.add_argument("--dense-model", default=None, help="dense baseline model (neurons, and SAEs on its MLP outputs)")
    p.add_argument("--corpus", default="data/corpus", help="corpus directory (monet-interp corpus build)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--methods", type=_names, default=["2x", "ratio", "random"],
                   help="rules applied to --model's experts: 2x, ratio, ratio-iter, random (default 2x,ratio,random)")
    p.add_argument("--top1-rules", type=_names, default=["2x"], help="rules for --top1-model (default 2x)")
    p.add_argument("--baseline-rule", default="ratio", choices=[r for r in RULES if r not in ("random", "same")],
                   help="selection rule for dense neurons and SAE features (default ratio)")
    p.add_argument("--no-neurons", action="store_true", help="skip the dense-neuron baseline")
    p.add_argument("--no-sae", action="store_true", help="skip the SAE baseline")
    p.add_argument("--sae-modes", type=_names, default=["error"],
                   help="error (error term kept) and/or spliced (with both: spliced removes the same features)")
    p.add_argument("--sae-clamp", type=float, default=-2.0,
                   help="value of a removed active SAE feature in units of its mean active value (0 = zero-ablate)")
    p.add_argument("--sae-steps", type=int, default=200)
    p.add_argument("--sae-expansion", type=int, default=4)
    p.add_argument("--sae-k", type=int, default=16)
    p.add_argument("--sae-tokens-per-label", type=int, default=1024)
    p.add_argument("--scope", default="group", choices=SCOPES, help="expert scope: whole routing group or one layer")
    p.add_argument("--heads", default="all", choices=HEAD_MODES, help="expert units over all heads or per head")
    p.add_argument("--statistic", default=D.statistic, choices=STATISTICS)
    p.add_argument("--fractions", type=_floats, default=D.fractions, help="ratio-rule curve grid")
    p.add_argument("--retain-budget", type=float, default=D.retain_budget, help="retain top-1 drop allowed (points)")
    p.add_argument("--refine-steps", type=int, default=D.refine_steps, help="bisection points refining each curve's budget point")
    p.add_argument("--seq-len", type=int, default=D.seq_len)
    p.add_argument("--stat-tokens", type=int, default=D.stat_tokens, help="training tokens per label for statistics")
    p.add_argument("--eval-forget-tokens", type=int, default=D.eval_forget_tokens, help="test tokens of the forgotten label")
    p.add_argument("--eval-tokens", type=int, default=D.eval_tokens, help="test tokens of every other label")
    p.add_argument("--curve-forget-tokens", type=int, default=D.curve_forget_tokens)
    p.add_argument("--curve-retain-tokens", type=int, default=D.curve_retain_tokens)
    p.add_argument("--iter-step", type=float, default=D.iter_step)
    p.add_argument("--iter-steps", type=int, default=D.iter_steps)
    p.add_argument("--batch-size", type=int, default=D.batch_size)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy machine)")
    p.add_argument("--seed", type=int, default=D.seed)
    p.add_argument("--no-html", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run_cli)
    return p


def run_cli(args: argparse.Namespace) -> int:
    import torch

    from monet_interp.analyses.unlearning import default_methods, run_unlearning
    from monet_interp.data import open_corpus
    from monet_interp.model import HookedMONET

    if args.threads:
        torch.set_num_threads(args.threads)
    unknown = [r for r in [*args.methods, *args.top1_rules] if r not in RULES or r == "same"]
    if unknown:
        raise ValueError(f"unknown rule(s) {unknown}; choose from {RULES}")
    bad_modes = [m for m in args.sae_modes if m not in ("error", "spliced")]
    if bad_modes:
        raise ValueError(f"unknown SAE mode(s) {bad_modes}; choose from error, spliced")
    t0, cpu0 = time.perf_counter(), time.process_time()
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, flush=True))
    corpus = open_corpus(args.corpus, verify=False)
    model = HookedMONET.from_pretrained(args.model)
    top1 = HookedMONET.from_pretrained(args.top1_model) if args.top1_model else None
    dense = bank = None
    if args.dense_model:
        from monet_interp.analyses.baselines import train_saes
        from monet_interp.loading import load_model

        dense = load_model(args.dense_model)
        if not args.no_sae:
            log(f"training SAEs on {args.dense_model} MLP outputs ({args.sae_steps} steps per layer) ...")
            bank = train_saes(dense, corpus, labels=args.labels, tokens_per_label=args.sae_tokens_per_label,
                              seq_len=args.seq_len, expansion=args.sae_expansion, k=args.sae_k, steps=args.sae_steps,
                              seed=args.seed, progress=False)
            log("  SAEs: " + "; ".join(f"layer {k}: FVU {bank.fvu[k]:.3f}, L0 {bank.l0[k]:.1f}" for k in bank.layers)
                + f" ({bank.info['seconds']:.1f} s)")
    methods = default_methods(model, top1=top1, dense=None if args.no_neurons else dense, sae_bank=bank,
                              monet_rules=args.methods, top1_rules=args.top1_rules, baseline_rule=args.baseline_rule,
                              sae_modes=args.sae_modes, sae_clamp=args.sae_clamp, scope=args.scope, heads=args.heads)
    result = run_unlearning(
        None, corpus, forget=args.forget, methods=methods, labels=args.labels, statistic=args.statistic,
        fractions=args.fractions, retain_budget=args.retain_budget, refine_steps=args.refine_steps,
        seq_len=args.seq_len, stat_tokens=args.stat_tokens,
        eval_forget_tokens=args.eval_forget_tokens, eval_tokens=args.eval_tokens,
        curve_forget_tokens=args.curve_forget_tokens, curve_retain_tokens=args.curve_retain_tokens,
        iter_step=args.iter_step, iter_steps=args.iter_steps, batch_size=args.batch_size, seed=args.seed,
        progress=not args.quiet)
    total = time.perf_counter() - t0
    result.timing["wall_s_including_loading_and_sae_training"] = total
    result.timing["cpu_s_including_loading_and_sae_training"] = time.process_time() - cpu0
    if bank is not None:
        result.notes.append(f"SAEs: {bank.info}; FVU {bank.fvu}; L0 {bank.l0}")
    out = Path(args.out)
    result.save(out, html=not args.no_html)
    tables = ["## Top-1 accuracy: dTarget / dOthers (points; units removed)", result.markdown("top1"), "",
              "## Bits per byte: dTarget / dOthers", result.markdown("bpb", digits=3, counts=False), ""]
    if any(m["units"].get("kind") == "expert" for m in result.methods):
        goal = result.goal()
        met = int(goal["met"].sum())
        tables += [f"## Goal: some MONET expert method removes the label (dTarget <= -5 top-1 points, "
                   f"|dOthers| <= 0.5): {met} of {len(goal)}",
                   "| forget | met | method | dTarget | dOthers | units |", "|---|---|---|---|---|---|"]
        tables += [f"| {lab} | {'yes' if row['met'] else 'no'} | {row['method'] or '-'} | "
                   f"{row['d_target_top1']:+.2f} | {row['d_others_top1']:+.2f} | {row['n_removed']:.0f} |"
                   for lab, row in goal.iterrows()] + [""]
        result.share_curve("top1").to_csv(out / "share_curve.csv", index=False)
    (out / "README_table.md").write_text("\n".join(tables) + "\n")
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.precision", 3):
        log(result.overview().to_string())
    log("\n".join(tables))
    log(f"wall time {total:.1f} s, CPU time {result.timing['cpu_s_including_loading_and_sae_training']:.1f} s "
        f"(sweep {result.timing['total_s']:.1f} s wall, {result.timing['evaluated_tokens']} tokens evaluated); "
        f"results in {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``unlearn`` without the main ``monet-interp`` parser:
    ``python -m monet_interp.analyses.cli.unlearning --forget python ... --out runs/unlearning``."""
    import sys

    parser = argparse.ArgumentParser(prog="monet-interp")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["unlearn", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"monet-interp unlearn: error: {err}", file=sys.stderr)
        return 2


__all__ = ["main", "register", "run_cli"]

if __name__ == "__main__":
    raise SystemExit(main())
