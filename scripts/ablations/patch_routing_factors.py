"""Activation patching of routing: run prompt B with the routing factors of prompt A at one layer.

Caches ``hook_g_row``/``hook_g_col`` on a source prompt, then patches them into a target prompt
at the last position, and reports how the next-token distribution moves toward the source's.

    python scripts/ablations/patch_routing_factors.py --layer 1
"""

import argparse

import torch

from monet_interp import HookedMONET


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="monet-vd-tiny")
    parser.add_argument("--layer", type=int, default=0)
    parser.add_argument("--source", default="def add(a, b):\n    return a +")
    parser.add_argument("--target", default="sub add {\n    my ($a, $b) = @_;\n    return $a +")
    args = parser.parse_args()

    model = HookedMONET.from_pretrained(args.model)
    if not 0 <= args.layer < model.cfg.n_layers:
        parser.error(f"--layer must be < {model.cfg.n_layers}")
    names = [f"blocks.{args.layer}.moe.hook_g_row", f"blocks.{args.layer}.moe.hook_g_col"]
    source, target = model.to_tokens(args.source), model.to_tokens(args.target)
    with torch.no_grad():
        source_logits, source_cache = model.run_with_cache(source, names_filter=names)
        target_logits = model(target)

        def patch_last_position(g: torch.Tensor, hook) -> torch.Tensor:
            g = g.clone()
            g[:, -1] = source_cache[hook.name][:, -1]  # [batch, head, expert] of the source's last token
            return g

        patched_logits = model.run_with_hooks(target, fwd_hooks=[(name, patch_last_position) for name in names])

    def log_probs(logits):
        return logits[0, -1].log_softmax(-1)

    p_source, p_target, p_patched = map(log_probs, (source_logits, target_logits, patched_logits))
    kl = lambda p, q: (p.exp() * (p - q)).sum().item()  # noqa: E731
    print(f"KL(source || target)  = {kl(p_source, p_target):.4f}")
    print(f"KL(source || patched) = {kl(p_source, p_patched):.4f}  (smaller: the routing carried the difference)")
    top = p_patched.topk(5).indices.tolist()
    print("patched top-5 next tokens:", [model.to_string([t]) for t in top])


if __name__ == "__main__":
    main()
