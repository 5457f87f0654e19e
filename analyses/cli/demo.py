"""``monet-interp demo``: load a model, run it with cache and print routing facts."""

from __future__ import annotations

import argparse
from typing import Any


def _demo(args: argparse.Namespace) -> None:
    import torch

    from monet_interp import HookedMONET

    model = HookedMONET.from_pretrained(args.model)
    cfg = model.cfg
    print(f"model: {args.model} ({cfg.moe_decompose}, {cfg.num_hidden_layers} layers, d={cfg.hidden_size}, "
          f"E={cfg.moe_experts} -> {cfg.moe_experts ** 2:,} experts per routing group, {cfg.moe_heads} heads, "
          f"{cfg.num_routers} routing groups, {sum(p.numel() for p in model.parameters()):,} parameters)")
    tokens = model.to_tokens(args.text)
    with torch.no_grad():
        loss, cache = model.run_with_cache(tokens, return_type="loss",
                                           names_filter=lambda n: "hook_g_" in n)
    print(f"text: {args.text!r} -> {tokens.shape[1]} tokens, next-token loss {loss.item():.3f} nats")
    strs = model.to_str_tokens(tokens)
    for group in range(cfg.num_routers):
        layer = cfg.layers_of_group(group)[0]
        g1 = cache[f"blocks.{layer}.moe.hook_g_row"][0]
        g2 = cache[f"blocks.{layer}.moe.hook_g_col"][0]
        kept1 = (g1 > 0).sum(-1).float().mean().item()
        kept2 = (g2 > 0).sum(-1).float().mean().item()
        print(f"routing group {group} (layers {cfg.layers_of_group(group)}): kept per head: "
              f"{kept1:.1f} rows i, {kept2:.1f} columns j")
        # The strongest expert (i, j) per token, summed over heads: sum_h g1[h,i] g2[h,j].
        for pos, text in list(enumerate(strs))[: args.show_tokens]:
            score = torch.einsum("hi,hj->ij", g1[pos], g2[pos])
            flat = int(score.argmax())
            i, j = divmod(flat, cfg.moe_experts)
            print(f"  {text!r:>12}  top expert (i={i}, j={j}) flat id {flat}, routing score {score.max():.3f}")


def register(subparsers: Any) -> argparse.ArgumentParser:
    demo = subparsers.add_parser("demo", help="load a model, run with cache, print routing facts")
    demo.add_argument("--model", default="monet-vd-tiny", help="embedded name, checkpoint folder or hub id")
    demo.add_argument("--text", default="def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1)")
    demo.add_argument("--show-tokens", type=int, default=8)
    demo.set_defaults(func=_demo)
    return demo


__all__ = ["register"]
