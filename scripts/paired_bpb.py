"""Is one model's held-out bits per byte really below another's? A paired bootstrap.

    python scripts/paired_bpb.py monet-vd-tiny dense-tiny --corpus data/corpus

Both models score the same test windows the trainer's final evaluation uses (per label, up to
``--windows`` non-overlapping windows of ``--seq-len`` + 1 tokens spread evenly over the split).
The mean over labels of each model's bpb is compared; windows are resampled with replacement
within each label (the same draw for both models) ``--boot`` times. Prints both means, their
difference A - B, its bootstrap standard error, a 95% interval and the share of draws with
A - B <= 0. This measures the evaluation's noise, not the training seed's.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping

import numpy as np
import torch

LN2 = float(np.log(2.0))


def mean_bpb(windows: Mapping[str, np.ndarray], picks: Mapping[str, np.ndarray] | None = None) -> float:
    """Unweighted mean over labels of sum(NLL) / sum(bytes) / ln 2; ``windows[label]`` is [n, 2]
    (NLL in nats, target bytes) per window, ``picks[label]`` the window indices to use."""
    values = []
    for label, rows in windows.items():
        chosen = rows if picks is None else rows[picks[label]]
        values.append(chosen[:, 0].sum() / chosen[:, 1].sum() / LN2)
    return float(np.mean(values))


def paired_bootstrap(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], n_boot: int = 2000,
                     seed: int = 0) -> dict[str, float]:
    """Mean bpb of A and B, their difference and its bootstrap spread (windows resampled within
    each label, the same windows for A and B)."""
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        raise ValueError("A and B must score the same windows of the same labels")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    for k in range(n_boot):
        picks = {label: rng.integers(0, len(rows), len(rows)) for label, rows in a.items()}
        diffs[k] = mean_bpb(a, picks) - mean_bpb(b, picks)
    bpb_a, bpb_b = mean_bpb(a), mean_bpb(b)
    return {"bpb_a": bpb_a, "bpb_b": bpb_b, "diff": bpb_a - bpb_b, "se": float(diffs.std()),
            "low": float(np.percentile(diffs, 2.5)), "high": float(np.percentile(diffs, 97.5)),
            "p_not_above": float(np.mean(diffs <= 0))}


@torch.inference_mode()
def window_scores(model, corpus, windows: int, seq_len: int) -> dict[str, np.ndarray]:
    """{label: [n, 2] (NLL nats, target bytes) per test window} of one model."""
    from monet_interp.evaluation import token_byte_lengths
    from monet_interp.training.metrics import nll_and_bytes, spread_windows

    byte_lengths = token_byte_lengths(model.tokenizer, model.cfg.vocab_size)
    out = {}
    for label in corpus.labels:
        rows = spread_windows(np.asarray(corpus.tokens(label, "test")), windows, seq_len)
        if rows is not None:
            out[label] = np.array([nll_and_bytes(model, torch.from_numpy(row[None]), byte_lengths)[:2] for row in rows])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_a")
    parser.add_argument("model_b")
    parser.add_argument("--corpus", default="data/corpus")
    parser.add_argument("--windows", type=int, default=64, help="test windows per label (the trainer's test_windows)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--boot", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.windows < 1 or args.seq_len < 1 or args.boot < 1:
        parser.error("--windows, --seq-len and --boot must be >= 1")
    from monet_interp import load_model
    from monet_interp.data import open_corpus

    torch.set_num_threads(1)
    corpus = open_corpus(args.corpus)
    scores = [window_scores(load_model(name).eval(), corpus, args.windows, args.seq_len)
              for name in (args.model_a, args.model_b)]
    r = paired_bootstrap(*scores, n_boot=args.boot, seed=args.seed)
    print(f"{args.model_a} {r['bpb_a']:.4f}  {args.model_b} {r['bpb_b']:.4f}  A - B {r['diff']:+.4f} "
          f"(bootstrap SE {r['se']:.4f}, 95% [{r['low']:+.4f}, {r['high']:+.4f}], share of draws with A - B <= 0: "
          f"{r['p_not_above']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
