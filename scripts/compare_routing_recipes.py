"""Train one MONET shape with several routing recipes at equal tokens and compare routing health.

    python scripts/compare_routing_recipes.py --corpus data/corpus --steps 150 --jobs 2 --out runs/recipes

Each recipe is a set of trainer options (``monet-interp train``) on top of the same base run. It
shares with the embedded models (``scripts/train_embedded.sh``) the seed, the shape, batch 32 x 128,
the peak learning rate and the label weighting (--label-power, default 0.5), hence the batch of
each step; it differs in length (--steps, default 150, the cosine decay spread over those steps),
a 30-step warmup (embedded: 100), float32 instead of bf16 autocast, no selection-bias balancing
in the base recipe (the embedded MONET runs are "absolute bias u=1e-2") and 16 test windows per
label (embedded: 64). Runs are resumable and skipped when finished, so the script can be re-run
to add recipes. The table (markdown, also written to ``OUT/recipes.md`` and ``OUT/recipes.json``)
gives held-out bits per byte and, per routing group on validation text (running BatchNorm
statistics, as at inference), the share of dead expert pairs, dead rows i / columns j and the
maximal load violation.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from monet_interp.training.cli_args import config_from_args, parse_train_args
from monet_interp.training.trainer import changed_settings

RECIPES: dict[str, list[str]] = {
    "paper (aux 1e-3)": [],
    "aux 1e-2": ["--aux-weight", "0.01"],
    "bias balancing u=1e-3": ["--balance-rate", "0.001", "--balance-target", "mean"],
    "bias balancing u=1e-2": ["--balance-rate", "0.01", "--balance-target", "mean"],
    "z-loss 1e-3": ["--z-loss-weight", "0.001"],
    "routing warmup (1/3 of steps)": ["--routing-warmup-steps", "{warmup}"],
    "bias u=1e-2 + aux 1e-2": ["--balance-rate", "0.01", "--balance-target", "mean", "--aux-weight", "0.01"],
    "absolute bias u=1e-3": ["--balance-rate", "0.001", "--balance-target", "absolute"],
    "absolute bias u=1e-2": ["--balance-rate", "0.01", "--balance-target", "absolute"],
    "absolute bias u=1e-2 + aux 1e-2": ["--balance-rate", "0.01", "--balance-target", "absolute",
                                        "--aux-weight", "0.01"],
}


def base_args(args: argparse.Namespace) -> list[str]:
    return ["--corpus", args.corpus, "--model", args.model, "--steps", str(args.steps), "--batch-size", "32",
            "--seq-len", "128", "--lr", "0.003", "--warmup-steps", "30", "--min-lr-ratio", "0.1",
            "--label-power", str(args.label_power), "--eval-every", str(args.steps), "--eval-batches", "1",
            "--eval-batch-size", "8", "--test-windows", "16", "--health-batches", "8",
            "--checkpoint-every", "50", "--threads", "1", "--seed", "0", "--resume", "--quiet"]


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").replace("--", "-")


def run_recipe(name: str, extra: list[str], args: argparse.Namespace) -> Path:
    """Train one recipe into OUT/<slug>, or reuse the finished run there if it was trained with
    exactly these settings (a run with other settings is an error: choose another --out)."""
    out = Path(args.out) / slug(name)
    extra = [x.format(warmup=max(1, args.steps // 3)) for x in extra]
    train_args = ["--out", str(out), *base_args(args), *extra]
    manifest = out / "training_manifest.json"
    if manifest.is_file():
        changed = changed_settings(json.loads(manifest.read_text())["train"], config_from_args(parse_train_args(train_args)))
        if changed:
            raise SystemExit(f"{out} was trained with other settings than recipe {name!r} ({', '.join(changed)}); "
                             f"use a fresh --out")
        return out
    command = [sys.executable, "-m", "monet_interp.training", *train_args]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.log", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    return out


def summarise(name: str, out: Path) -> dict:
    manifest = json.loads((out / "training_manifest.json").read_text())
    groups = manifest["health"]["groups"]
    return {"recipe": name, "tokens": manifest["tokens_seen"], "test_bpb": manifest["test_bpb_mean"],
            "val_bpb": manifest["final_val_bpb_mean"],
            "dead_pairs": [g["dead_pair_share"] for g in groups], "dead_rows": [g["dead_row_share"] for g in groups],
            "dead_cols": [g["dead_col_share"] for g in groups], "max_vio": [g.get("max_vio") for g in groups],
            "kept": [0.5 * (g["mean_kept_row"] + g["mean_kept_col"]) for g in groups],
            "train_tokens_per_s": manifest["train_tokens_per_s"]}


def table(rows: list[dict]) -> str:
    def pct(values: list[float]) -> str:
        return " / ".join(f"{v:.0%}" for v in values)

    lines = ["| recipe | test bpb | dead pairs (g0 / g1) | dead i | dead j | max load violation | kept per head |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        vio = " / ".join(f"{v:.1f}" for v in r["max_vio"] if v is not None)
        lines.append(f"| {r['recipe']} | {r['test_bpb']:.3f} | {pct(r['dead_pairs'])} | {pct(r['dead_rows'])} | "
                     f"{pct(r['dead_cols'])} | {vio} | {' / '.join(f'{k:.1f}' for k in r['kept'])} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="data/corpus")
    parser.add_argument("--out", default="runs/recipes")
    parser.add_argument("--model", default="vd", choices=("vd", "hd", "top1"))
    parser.add_argument("--steps", type=int, default=150, help="steps of 32 x 128 tokens per recipe (default 150)")
    parser.add_argument("--label-power", type=float, default=0.5)
    parser.add_argument("--jobs", type=int, default=2, help="recipes trained at once (one thread each)")
    parser.add_argument("--recipes", nargs="*", default=None, help=f"subset of: {', '.join(RECIPES)}")
    args = parser.parse_args()
    names = args.recipes or list(RECIPES)
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        parser.error(f"unknown recipes: {unknown}; choose from {list(RECIPES)}")
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        outs = list(pool.map(lambda n: run_recipe(n, RECIPES[n], args), names))
    rows = [summarise(n, o) for n, o in zip(names, outs)]
    text = table(rows)
    Path(args.out, "recipes.md").write_text(text + "\n")
    Path(args.out, "recipes.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
