"""Forward time with HookPoints present (no hooks attached) vs the same model with every HookPoint
replaced by nn.Identity. Target: ratio <= 1.10.

    python benchmarks/bench_hooks.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn
from transformer_lens.hook_points import HookPoint

from monet_interp import HookedMONET, MonetConfig


def strip_hook_points(model: nn.Module) -> nn.Module:
    bare = copy.deepcopy(model)
    for name, module in list(bare.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, HookPoint):
                setattr(module, child_name, nn.Identity())
    return bare


def time_forward(model: nn.Module, tokens: torch.Tensor, repeats: int) -> float:
    with torch.no_grad():
        model(tokens)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(tokens)
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for name, cfg, shape in [
        ("tiny (d=192, E=64, 4 layers)", MonetConfig(vocab_size=4096, hidden_size=192, num_hidden_layers=4,
                                                      num_attention_heads=4, moe_dim=16, moe_heads=4, moe_experts=64,
                                                      moe_topk=4, moe_groups=2, max_position_embeddings=512), (4, 128)),
        ("small (d=512, E=256, 4 layers)", MonetConfig(vocab_size=8192, hidden_size=512, num_hidden_layers=4,
                                                        num_attention_heads=8, moe_dim=8, moe_heads=8, moe_experts=256,
                                                        moe_topk=8, moe_groups=4, max_position_embeddings=512), (2, 128)),
    ]:
        hooked = HookedMONET(cfg)
        bare = strip_hook_points(hooked)
        tokens = torch.randint(0, cfg.vocab_size, shape)
        assert torch.equal(hooked(tokens), bare(tokens))
        # interleave to share machine noise
        t_hooked, t_bare = [], []
        for _ in range(5):
            t_bare.append(time_forward(bare, tokens, args.repeats))
            t_hooked.append(time_forward(hooked, tokens, args.repeats))
        hooked_ms, bare_ms = min(t_hooked) * 1e3, min(t_bare) * 1e3
        rows.append((name, shape, bare_ms, hooked_ms, hooked_ms / bare_ms))
    print("| model | tokens | no HookPoints (ms) | HookPoints, no hooks (ms) | ratio |")
    print("|---|---|---|---|---|")
    for name, shape, bare_ms, hooked_ms, ratio in rows:
        print(f"| {name} | {shape[0]}x{shape[1]} | {bare_ms:.2f} | {hooked_ms:.2f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
