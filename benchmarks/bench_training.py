"""Training throughput (tokens/s): the trainer's step against a plain-torch reference step, side by side.

    python benchmarks/bench_training.py                                 # embedded-model shape, random tokens
    python benchmarks/bench_training.py --corpus data/corpus --rounds 5 --threads 1 --json out.json

For each model kind (vd, hd, top1, dense) two steps are timed: the trainer's own
``monet_interp.training.trainer.train_step`` on a HookedMONET / HookedDense (hook points, routing
outputs, L_LM + lambda (L_unif + L_amb), clipping, AdamW, scheduler, routing metrics) and
``benchmarks/reference_training.py``'s plain step of the same math and shape (no hooks, no checks).
All eight are measured in interleaved rounds (vd, vd-ref, hd, hd-ref, ...) so that load from other
processes hits all of them alike; the figure is the median over rounds of tokens per second of one
timed step (after one warm-up step each). Printed: trainer / reference and MONET / dense ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reference_training import make_reference_step  # noqa: E402

from monet_interp.training.trainer import (MODEL_KINDS, TrainConfig, _set_mode, build_model, lr_factor,  # noqa: E402
                                           parameter_groups, train_step)


def make_trainer_step(config: TrainConfig, vocab_size: int):
    model = build_model(config, vocab_size)
    _set_mode(model, config, True)
    optimizer = torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr,
                                  betas=(config.beta1, config.beta2))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
    params = [p for p in model.parameters() if p.requires_grad]
    counter = [0]

    def step(batch: torch.Tensor) -> float:
        start = time.perf_counter()
        train_step(model, batch, config, optimizer, scheduler, params, counter[0])
        counter[0] += 1
        return time.perf_counter() - start

    return model, step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODEL_KINDS))
    parser.add_argument("--corpus", default=None, help="sample real batches from this corpus (default: random ids)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--d-model", type=int, default=192)
    parser.add_argument("--moe-experts", type=int, default=64)
    parser.add_argument("--moe-dim", type=int, default=8)
    parser.add_argument("--precision", default="float32", choices=("float32", "bfloat16"),
                        help="bfloat16: bf16 autocast for both steps (the embedded recipe)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kinds = [k.strip() for k in args.models.split(",") if k.strip()]
    vocab = 4096
    corpus = None
    if args.corpus:
        from monet_interp.data import Corpus

        corpus = Corpus.load(args.corpus, verify=False)
        vocab = corpus.vocab_size
    steps, params = {}, {}
    for kind in kinds:
        config = TrainConfig(model=kind, batch_size=args.batch_size, seq_len=args.seq_len, d_model=args.d_model,
                             moe_experts=args.moe_experts, moe_dim=args.moe_dim, precision=args.precision,
                             progress=False)
        model, steps[kind] = make_trainer_step(config, vocab)
        params[kind] = sum(p.numel() for p in model.parameters())
        d_mlp = model.cfg.intermediate_size if kind == "dense" else None
        reference, steps[kind + "-ref"] = make_reference_step(
            kind, vocab=vocab, d=args.d_model, experts=args.moe_experts, m=args.moe_dim, d_mlp=d_mlp,
            bf16=args.precision == "bfloat16")
        params[kind + "-ref"] = sum(p.numel() for p in reference.parameters())
    generator = torch.Generator().manual_seed(0)

    def batch() -> torch.Tensor:
        if corpus is not None:
            return corpus.sample_batch("train", args.batch_size, args.seq_len, generator)
        return torch.randint(3, vocab, (args.batch_size, args.seq_len + 1), generator=generator)

    names = list(steps)
    for name in names:  # warm-up
        steps[name](batch())
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for name in names:
            times[name].append(steps[name](batch()))
    tokens = args.batch_size * args.seq_len
    rate = {n: tokens / statistics.median(times[n]) for n in names}
    results = {k: {"parameters": params[k], "tokens_per_s": rate[k], "reference_tokens_per_s": rate[k + "-ref"],
                   "trainer_over_reference": rate[k] / rate[k + "-ref"],
                   "step_s_all": times[k], "reference_step_s_all": times[k + "-ref"]} for k in kinds}
    dense = rate.get("dense")
    print(f"training step throughput, batch {args.batch_size} x {args.seq_len}, {args.precision}, {args.threads} thread(s), "
          f"{args.rounds} interleaved rounds (median)")
    print(f"{'model':7s} {'params':>10s} {'trainer tok/s':>14s} {'reference tok/s':>16s} {'trainer/ref':>12s} "
          f"{'vs dense':>9s}")
    for kind, row in results.items():
        versus = f"{row['tokens_per_s'] / dense:8.2f}x" if dense else ""
        row["trainer_over_dense"] = row["tokens_per_s"] / dense if dense else None
        print(f"{kind:7s} {row['parameters']:10,d} {row['tokens_per_s']:14.0f} {row['reference_tokens_per_s']:16.0f} "
              f"{row['trainer_over_reference']:11.2f}x {versus}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"settings": vars(args), "results": results}, handle, indent=1)


if __name__ == "__main__":
    main()
