"""CPU benchmark: one MoE layer at the released 850M / 1.4B shapes, unedited vs expert-pruned.

    python benchmarks/bench_editing_cpu.py                 # both sizes, VD and HD, T=256 (~3-5 min)
    python benchmarks/bench_editing_cpu.py --decompose vertical --reps 3

Random weights, routing by the released threshold rule on random logits (~8 experts kept per
head and factor, variable per token), T tokens. Times are CPU times (time.process_time; with one
intra-op thread, the default, that is the compute the layer costs, unaffected by the process
being descheduled on a shared machine), best of --reps forward passes under torch.no_grad()
after one warm-up, the variants interleaved within each rep; "ratio" is edited / unedited
time (target <= 1.15). The list-path column is a single call, for comparison only.

Peak memory is measured with the torch profiler (allocator events of the forward pass only;
weights and inputs excluded). The expansion approach (materialise g[t,h,i,j] for all E^2
experts, mask, contract) is measured the same way at small T and extrapolated linearly to T;
its analytic floor, the [T, H, E, E] float32 weight tensor alone, is printed too.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from monet_interp.components.moe import MonetMoE, relu2
from monet_interp.components.router import threshold_sigma
from monet_interp import MonetConfig
from monet_interp.editing import ExpertEdit, LayerEdit, compile_plan

SIZES = {  # d, E, m, H of the released checkpoints
    "850M": (1536, 512, 12, 6),
    "1.4B": (2048, 512, 16, 8),
}


def one_layer_config(experts: int, heads: int) -> MonetConfig:
    """The config of a single MoE layer (one routing group) with E experts and H heads."""
    return MonetConfig(num_hidden_layers=1, moe_groups=1, moe_experts=experts, moe_heads=heads, moe_topk=1)


def make_layer(d: int, experts: int, m: int, heads: int, decompose: str) -> MonetMoE:
    torch.manual_seed(0)
    moe = MonetMoE(d, experts, m, heads, decompose)
    with torch.no_grad():
        for param in moe.parameters():
            param.normal_(0, 0.02)
    return moe.eval()


def threshold_routing(tokens: int, heads: int, experts: int, topk: int = 8, seed: int = 0) -> torch.Tensor:
    """The released rule on standard-normal logits: keep >= min(max, sigma), softmax the kept."""
    logits = torch.randn(1, tokens, heads, experts, generator=torch.Generator().manual_seed(seed))
    bar = logits.amax(-1, keepdim=True).clamp_max(threshold_sigma(topk, experts))
    return torch.softmax(logits.masked_fill(logits < bar, float("-inf")), dim=-1)


def prune_plan(n: int, experts: int, heads: int, seed: int = 0):
    ids = torch.randperm(experts * experts, generator=torch.Generator().manual_seed(seed))[:n]
    return compile_plan(ExpertEdit.from_flat(ids, experts, "prune", layer=0), one_layer_config(experts, heads)).layers[0]


def interleaved_ms(fns: dict, reps: int, warmup: bool = True) -> dict[str, float]:
    """Best-of-reps CPU time (ms, time.process_time) of each function, the functions interleaved
    within every rep. CPU time rather than wall time: on a shared machine the process is often
    descheduled, which wall time would count."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    if warmup:
        for fn in fns.values():
            fn()  # warm-up (and the plans' device tensors)
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.process_time()
            fn()
            times[name].append(time.process_time() - start)
    return {name: 1000 * min(ts) for name, ts in times.items()}


def peak_bytes(fn) -> int:
    """Peak of live CPU allocations during fn() (torch profiler allocator events)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def expansion_forward(moe: MonetMoE, x: torch.Tensor, g_row: torch.Tensor, g_col: torch.Tensor,
                      keep: torch.Tensor) -> torch.Tensor:
    """The expansion approach: g[t,h,i,j] for every expert, masked, then contracted."""
    weights = g_row[..., :, :, None] * g_col[..., :, None, :] * keep  # [B, T, H, E, E]
    e = moe.n_experts
    if moe.decompose == "horizontal":
        acts = relu2(moe.u(x)).unflatten(-1, (e, moe.moe_dim))
        z = torch.einsum("bthij,btim->btjm", weights, acts)
        return moe.v(z.flatten(-2)) + weights.sum((2, 3)) @ moe.b
    half = (e, moe.moe_dim // 2)
    a1, a2 = relu2(moe.u1(x)).unflatten(-1, half), relu2(moe.u2(x)).unflatten(-1, half)
    r, c = weights.sum((2, 4)), weights.sum((2, 3))
    z12 = torch.einsum("bthij,btjm->btim", weights, a2)
    z21 = torch.einsum("bthij,btim->btjm", weights, a1)
    top = moe.v11((r[..., None] * a1).flatten(-2)) + moe.v12(z12.flatten(-2)) + r @ moe.b1
    bottom = moe.v21(z21.flatten(-2)) + moe.v22((c[..., None] * a2).flatten(-2)) + c @ moe.b2
    return torch.cat([top, bottom], -1)


def run(size: str, decompose: str, tokens: int, reps: int, two_percent: int, many: int) -> dict:
    d, experts, m, heads = SIZES[size]
    moe = make_layer(d, experts, m, heads, decompose)
    x = torch.randn(1, tokens, d, generator=torch.Generator().manual_seed(1))
    g_row, g_col = threshold_routing(tokens, heads, experts, seed=2), threshold_routing(tokens, heads, experts, seed=3)
    kept = (g_row > 0).sum(-1).float()
    plans = {"2%": prune_plan(two_percent, experts, heads), "many": prune_plan(many, experts, heads)}

    def forward(seam=None):
        moe.expert_edit = seam
        try:
            with torch.no_grad():
                return moe(x, g_row, g_col)
        finally:
            moe.expert_edit = None

    row = {"size": size, "decompose": decompose[0].upper() + "D", "T": tokens,
           "kept": f"{kept.mean():.1f} (max {int(kept.max())})"}
    seams = {key: LayerEdit(plan, "torch", "auto") for key, plan in plans.items()}
    timed = interleaved_ms({"base": forward, **{key: (lambda s=seam: forward(s)) for key, seam in seams.items()}},
                           reps)
    for key, ms in timed.items():
        row[f"{key}_ms"] = ms
    for key, seam in seams.items():
        row[f"{key}_path"] = seam.last_path
    row["many_list_ms"] = interleaved_ms({"list": lambda: forward(LayerEdit(plans["many"], "torch", "list"))},
                                         1, warmup=False)["list"]  # one call: slow, for comparison only

    row["base_peak"] = peak_bytes(forward)
    row["many_peak"] = peak_bytes(lambda: forward(LayerEdit(plans["many"], "torch", "auto")))
    keep = torch.ones(experts, experts)
    keep.view(-1)[torch.randperm(experts * experts, generator=torch.Generator().manual_seed(0))[:many]] = 0
    small = (4, 8)
    peaks = []
    for t in small:
        with torch.no_grad():
            peaks.append(peak_bytes(lambda t=t: expansion_forward(moe, x[:, :t], g_row[:, :t], g_col[:, :t], keep)))
    slope = (peaks[1] - peaks[0]) / (small[1] - small[0])
    row["expansion_peak"] = peaks[0] + slope * (tokens - small[0])
    row["expansion_floor"] = tokens * heads * experts * experts * 4
    with torch.no_grad():  # the expansion is exact too: check the edited layer against it at small T
        t = small[0]
        moe.expert_edit = LayerEdit(plans["many"], "torch", "auto")
        edited = moe(x[:, :t], g_row[:, :t], g_col[:, :t])
        moe.expert_edit = None
        row["max_err"] = (edited - expansion_forward(moe, x[:, :t], g_row[:, :t], g_col[:, :t], keep)).abs().max().item()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--decompose", nargs="+", default=["vertical", "horizontal"],
                        choices=["vertical", "horizontal"])
    parser.add_argument("--many", type=int, default=20_000, help="experts pruned in the large-mask case")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1 by default: on a shared, oversubscribed machine every "
                             "small parallel op waits for descheduled threads, which swamps the edit's own cost)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    two_percent = round(0.02 * 512 * 512)
    rows = [run(size, dec, args.tokens, args.reps, two_percent, args.many)
            for size in args.sizes for dec in args.decompose]
    mb = 1 / 2**20
    print(f"\nOne MoE layer, T={args.tokens}, torch {torch.__version__}, {args.threads} threads, float32, "
          f"CPU time, best of {args.reps} interleaved reps.\n")
    print(f"| model | dec | kept/head | unedited ms | 2% pruned ({two_percent:,}) ms (ratio, path) "
          f"| {args.many:,} pruned ms (ratio, path) | {args.many:,} pruned, list path forced ms |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['decompose']} | {r['kept']} | {r['base_ms']:.1f} "
              f"| {r['2%_ms']:.1f} ({r['2%_ms'] / r['base_ms']:.3f}x, {r['2%_path']}) "
              f"| {r['many_ms']:.1f} ({r['many_ms'] / r['base_ms']:.3f}x, {r['many_path']}) "
              f"| {r['many_list_ms']:.1f} ({r['many_list_ms'] / r['base_ms']:.2f}x) |")
    print(f"\n| model | dec | peak MB unedited | peak MB {args.many:,} pruned | expansion peak MB (extrapolated) "
          f"| expansion floor MB ([T,H,E,E] fp32) | expansion / edited | max abs err vs expansion |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['decompose']} | {r['base_peak'] * mb:.1f} | {r['many_peak'] * mb:.1f} "
              f"| {r['expansion_peak'] * mb:,.0f} | {r['expansion_floor'] * mb:,.0f} "
              f"| {r['expansion_peak'] / r['many_peak']:.0f}x | {r['max_err']:.1e} |")


if __name__ == "__main__":
    main()
