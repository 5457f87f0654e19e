"""HookedMONET: a TransformerLens-style hooked MONET language model.

    model = HookedMONET.from_pretrained("monet-vd-tiny")
    logits, cache = model.run_with_cache("def main():")
    cache["blocks.0.moe.hook_g_row"]  # [batch, pos, head, expert] routing factors g1

Every activation a TransformerLens user expects has a HookPoint (``hook_embed``,
``blocks.{l}.hook_resid_pre/mid/post``, ``hook_attn_out``, ``hook_mlp_out``, attention internals,
norms), and MONET's routing has its own: ``blocks.{l}.moe.hook_router_logits_row/_col`` (router
layers), ``blocks.{l}.moe.hook_g_row/_col`` (the factors each layer uses, on every layer) and
``blocks.{l}.moe.hook_expert_acts`` (HD) or ``hook_expert_acts_row/_col`` (VD).
"""

from __future__ import annotations

import torch

from monet_interp.components import KeyValueCache, MonetBlock
from monet_interp.components.router import RoutingFactors
from monet_interp.config import MonetConfig
from monet_interp.hooked_lm import HookedCausalLM, TextOrTokens
from monet_interp.tokenizer import MonetTokenizer


class HookedMONET(HookedCausalLM):
    config_class = MonetConfig
    default_checkpoint = "monet-vd-tiny"

    def __init__(self, cfg: MonetConfig, tokenizer: MonetTokenizer | None = None, device: str | torch.device | None = None):
        super().__init__()
        self.build(cfg, tokenizer, MonetBlock, device)

    def set_router_batch_stats(self, enabled: bool) -> None:
        """Route with batch statistics (training MONET) instead of the stored running statistics."""
        for block in self.blocks:
            if block.moe.router is not None:
                block.moe.router.use_batch_stats = enabled

    def accumulated_bias(self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = False
                         ) -> torch.Tensor:
        """Summed attention output biases before ``layer`` ([d_model]). MoE biases are not fixed."""
        if include_mlp_biases:
            raise NotImplementedError("MONET's MoE bias is not a fixed vector: it is sum_ij g_ij(x) b_ij, set per "
                                      "token by routing (it is part of each hook_mlp_out)")
        return super().accumulated_bias(layer, mlp_input)

    def routing_group_of_layer(self, layer: int) -> int:
        return self.cfg.group_of_layer(layer)

    def _run_blocks(self, resid: torch.Tensor, positions: torch.Tensor, key_mask: torch.Tensor | None,
                    cache: KeyValueCache | None, stop_at_layer: int | None) -> tuple[torch.Tensor, list[RoutingFactors]]:
        routing: RoutingFactors | None = None
        routers: list[RoutingFactors] = []
        for block in self.blocks[:stop_at_layer]:
            resid, routing = block(resid, routing, positions, key_mask, cache)
            if block.is_router_layer:
                routers.append(routing)
        return resid, routers

    # ------------------------------------------------------------------ expert edits
    def edit_experts(self, edits, backend: str = "auto", path: str = "auto"):
        """Context manager applying ExpertEdits to every forward inside it (see monet_interp.editing)."""
        from monet_interp.editing.context import edit_experts

        return edit_experts(self, edits, backend=backend, path=path)

    def run_with_edits(self, inputs: TextOrTokens, edits, backend: str = "auto", path: str = "auto", **forward_kwargs):
        """``self(inputs, **forward_kwargs)`` with ``edits`` active (removed afterwards)."""
        from monet_interp.editing.context import run_with_edits

        return run_with_edits(self, inputs, edits, backend=backend, path=path, **forward_kwargs)

