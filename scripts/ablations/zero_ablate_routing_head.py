"""Zero-ablate one routing head of one MONET layer and measure the loss change.

A routing head h contributes sum_i sum_j g1[h,i] g2[h,j] E_ij(x) to the MoE output. Zeroing
its row factors g1[h, :] with a hook on ``hook_g_row`` removes exactly that contribution
(the MoE mix in monet-interp computes the bias terms exactly, so nothing of head h remains).

    python scripts/ablations/zero_ablate_routing_head.py --layer 0 --head 1
"""

import argparse

import torch

from monet_interp import HookedMONET


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="monet-vd-tiny")
    parser.add_argument("--layer", type=int, default=0)
    parser.add_argument("--head", type=int, default=0)
    parser.add_argument("--text", default="import numpy as np\n\ndef mean(values):\n    return sum(values) / len(values)\n")
    args = parser.parse_args()

    model = HookedMONET.from_pretrained(args.model)
    if not 0 <= args.layer < model.cfg.n_layers or not 0 <= args.head < model.cfg.moe_heads:
        parser.error(f"--layer must be < {model.cfg.n_layers} and --head < {model.cfg.moe_heads}")
    tokens = model.to_tokens(args.text)

    def zero_head(g_row: torch.Tensor, hook) -> torch.Tensor:
        # g_row: [batch, pos, head, expert]; only this layer's copy of the factors is changed,
        # even when the router is shared with other layers of the routing group.
        g_row = g_row.clone()
        g_row[:, :, args.head, :] = 0.0
        return g_row

    with torch.no_grad():
        clean = model(tokens, return_type="loss").item()
        ablated = model.run_with_hooks(tokens, return_type="loss",
                                       fwd_hooks=[(f"blocks.{args.layer}.moe.hook_g_row", zero_head)]).item()
    print(f"loss clean {clean:.4f} nats, with head {args.head} of layer {args.layer} zeroed {ablated:.4f} "
          f"(change {ablated - clean:+.4f})")


if __name__ == "__main__":
    main()
