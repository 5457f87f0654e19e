"""Training throughput (tokens/s) of MONET (VD, HD, top-1) against the parameter-matched dense baseline.

    python benchmarks/bench_training.py                       # embedded-model shape, random tokens
    python benchmarks/bench_training.py --corpus data/corpus --rounds 5 --threads 1 --json out.json

Every model runs the trainer's exact step (forward with routing, L_LM + 1e-3 (L_unif + L_amb),
backward, clipping, AdamW). Models are measured in interleaved rounds (vd, hd, top1, dense, vd,
...) so that load from other processes on a shared machine hits all of them alike; the figure is
the median over rounds of tokens per second of one timed step (after one warm-up step per model).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from monet_interp.training.losses import routing_aux_losses
from monet_interp.training.trainer import MODEL_KINDS, TrainConfig, build_model, parameter_groups


def make_step(config: TrainConfig, vocab_size: int):
    model = build_model(config, vocab_size)
    model.train()
    model.set_router_batch_stats(config.routing_rule == "threshold")
    optimizer = torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr)
    params = list(model.parameters())

    def step(batch: torch.Tensor) -> float:
        start = time.perf_counter()
        loss, routers = model(batch, return_type="loss", return_routing=True)
        if routers:
            unif, amb = routing_aux_losses(routers)
            loss = loss + config.aux_weight * (unif + amb)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    return model, step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODEL_KINDS))
    parser.add_argument("--corpus", default=None, help="sample real batches from this corpus (default: random ids)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--d-model", type=int, default=192)
    parser.add_argument("--moe-experts", type=int, default=64)
    parser.add_argument("--moe-dim", type=int, default=8)
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
                             moe_experts=args.moe_experts, moe_dim=args.moe_dim, progress=False)
        model, step = make_step(config, vocab)
        steps[kind] = step
        params[kind] = sum(p.numel() for p in model.parameters())
    generator = torch.Generator().manual_seed(0)

    def batch() -> torch.Tensor:
        if corpus is not None:
            return corpus.sample_batch("train", args.batch_size, args.seq_len, generator)
        return torch.randint(3, vocab, (args.batch_size, args.seq_len + 1), generator=generator)

    for kind in kinds:  # warm-up
        steps[kind](batch())
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for kind in kinds:
            times[kind].append(steps[kind](batch()))
    tokens = args.batch_size * args.seq_len
    results = {k: {"parameters": params[k], "tokens_per_s": tokens / statistics.median(times[k]),
                   "step_s_median": statistics.median(times[k]), "step_s_all": times[k]} for k in kinds}
    reference = results.get("dense", {}).get("tokens_per_s")
    print(f"training throughput, batch {args.batch_size} x {args.seq_len}, {args.threads} thread(s), "
          f"{args.rounds} interleaved rounds")
    print(f"{'model':8s} {'params':>10s} {'tokens/s':>10s} {'vs dense':>9s}")
    for kind, row in results.items():
        ratio = f"{row['tokens_per_s'] / reference:8.2f}x" if reference else ""
        print(f"{kind:8s} {row['parameters']:10,d} {row['tokens_per_s']:10.0f} {ratio}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"settings": vars(args), "results": results}, handle, indent=1)


if __name__ == "__main__":
    main()
