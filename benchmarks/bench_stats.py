"""Routing-statistics throughput as a ratio to a plain forward pass over the same tokens.
Target: ratio >= 0.8. Prints a markdown table.

    python benchmarks/bench_stats.py [--tokens 32768] [--repeats 3] [--device cpu|cuda] [--threads N]

For each model: the same windows/batches are run through
- "forward": ``model(tokens, return_type=None)`` (the whole model, no logits),
- "forward to last router": the same, stopped after the last router layer (what the statistics
  need: later layers cannot change the routing),
- "stats": ``compute_routing_stats`` (top_k=16; with and without per-document maxima).
ratio = stats tokens/s / forward tokens/s (>= 1 is possible thanks to the early stop); the
"overhead" ratio compares against the forward to the last router (pure cost of the statistics).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from monet_interp import HookedMONET, MonetConfig
from monet_interp.data import MemoryCorpus
from monet_interp.stats import compute_routing_stats, plan_windows
from monet_interp.stats.stream import make_batch


def random_corpus(vocab: int, tokens: int, n_labels: int = 4, seed: int = 0) -> MemoryCorpus:
    """Random [bos, ..., eos] documents of 64..2048 tokens, ``tokens`` in all, code labels."""
    rng = np.random.default_rng(seed)
    labels = [f"label{k}" for k in range(n_labels)]
    docs = {}
    per_label = tokens // n_labels
    for lab in labels:
        docs[lab], total = [], 0
        while total < per_label:
            n = int(min(rng.integers(64, 2048), per_label - total + 2))
            docs[lab].append(np.concatenate([[1], rng.integers(3, vocab, max(n - 2, 1)), [2]]).astype(np.int64))
            total += len(docs[lab][-1])
    return MemoryCorpus.from_documents(docs, kinds=dict.fromkeys(labels, "code"))


def configure(router_std: float, model: HookedMONET) -> HookedMONET:
    """Trained-like routing: router weights with a spread so that ~topk experts pass per head."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for block in model.blocks:
            r = block.moe.router
            if r is not None:
                for w in (r.w1.weight, r.w2.weight):
                    w.copy_(torch.randn(w.shape, generator=gen) * router_std)
                for norm in (r.norm1, r.norm2):
                    norm.running_var.fill_(router_std ** 2 * model.cfg.hidden_size)
    return model


def time_forward(model, batches, stop_at_layer=None) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            model(b.tokens, return_type=None, stop_at_layer=stop_at_layer)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def time_stats(model, corpus, seq_len, batch_size, doc_max) -> float:
    start = time.perf_counter()
    compute_routing_stats(model, corpus, seq_len=seq_len, batch_size=batch_size, top_k=16, doc_max=doc_max,
                          progress=False)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--sizes", nargs="*", default=None, help="subset of: tiny small medium")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {
        # name: (config, seq_len, batch_size)
        "tiny": (MonetConfig(vocab_size=4096, hidden_size=192, num_hidden_layers=4, num_attention_heads=4, moe_dim=16,
                             moe_heads=4, moe_experts=64, moe_topk=4, moe_groups=2, max_position_embeddings=512),
                 128, 16),
        "small": (MonetConfig(vocab_size=8192, hidden_size=512, num_hidden_layers=4, num_attention_heads=8, moe_dim=8,
                              moe_heads=8, moe_experts=256, moe_topk=8, moe_groups=2, max_position_embeddings=512),
                  128, 8),
        "medium": (MonetConfig(vocab_size=32000, hidden_size=1024, num_hidden_layers=8, num_attention_heads=8,
                               moe_dim=8, moe_heads=8, moe_experts=512, moe_topk=8, moe_groups=4,
                               max_position_embeddings=2048), 512, 16),
    }
    names = args.sizes or (["tiny", "small"] if args.device == "cpu" else ["tiny", "small", "medium"])
    rows = []
    for name in names:
        cfg, seq_len, batch_size = models[name]
        model = configure(1.0, HookedMONET(cfg, device=args.device))
        corpus = random_corpus(cfg.vocab_size, args.tokens)
        plan = plan_windows(corpus, None, "val", seq_len)
        batches = [make_batch(plan, w, model.device) for w in plan.batches(plan.shard(0, 1), batch_size)]
        n_tokens = int(plan.win_len.sum())
        stop = cfg.router_layers[-1] + 1
        time_forward(model, batches[:2])  # warm-up
        time_stats(model, random_corpus(cfg.vocab_size, 4096), seq_len, batch_size, False)
        t_full, t_trunc, t_stats, t_stats_dm = [], [], [], []
        for _ in range(args.repeats):  # interleaved, to share machine noise
            t_full.append(time_forward(model, batches))
            t_trunc.append(time_forward(model, batches, stop))
            t_stats.append(time_stats(model, corpus, seq_len, batch_size, False))
            t_stats_dm.append(time_stats(model, corpus, seq_len, batch_size, True))
        full, trunc, stats, stats_dm = (min(t) for t in (t_full, t_trunc, t_stats, t_stats_dm))
        kept = []
        with torch.inference_mode():
            _, routers = model(batches[0].tokens, return_type=None, stop_at_layer=stop, return_routing=True)
            kept = float((routers[0].g_row > 0).sum(-1).float().mean())
        rows.append((name, cfg, n_tokens, kept, stop, full, trunc, stats, stats_dm))
    print(f"device: {args.device}, torch threads: {torch.get_num_threads()}, top_k=16\n")
    print("| model | tokens | kept per head | forward tok/s | fwd to last router tok/s | stats tok/s | "
          "ratio vs forward | overhead ratio (vs fwd to router) | ratio with doc_max |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, cfg, n, kept, stop, full, trunc, stats, stats_dm in rows:
        desc = (f"{name} (d={cfg.hidden_size}, E={cfg.moe_experts}, H={cfg.moe_heads}, {cfg.num_hidden_layers} layers, "
                f"{cfg.num_routers} groups, stop at {stop})")
        print(f"| {desc} | {n} | {kept:.1f} | {n / full:,.0f} | {n / trunc:,.0f} | {n / stats:,.0f} | "
              f"{full / stats:.2f} | {trunc / stats:.2f} | {full / stats_dm:.2f} |")


if __name__ == "__main__":
    main()
