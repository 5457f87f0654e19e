"""One pre-norm MONET decoder block: attention, then the mixture of experts."""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import nn

from monet_interp.components.attention import Attention, KeyValueCache
from monet_interp.components.hooks import hook_point
from monet_interp.components.moe import MonetMoE
from monet_interp.components.norm import RMSNorm
from monet_interp.components.router import MonetRouter, RoutingFactors
from monet_interp.config import MonetConfig


class MonetBlock(nn.Module):
    def __init__(self, cfg: MonetConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.ln1 = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        scaling = float(cfg.rope_scaling.get("factor", 1.0)) if cfg.rope_scaling else 1.0
        self.attn = Attention(cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.rope_theta,
                              scaling, cfg.attention_bias)
        self.ln2 = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        router = None
        if layer % cfg.moe_groups == 0:
            router = MonetRouter(cfg.hidden_size, cfg.moe_heads, cfg.moe_experts, cfg.moe_topk, cfg.moe_routing,
                                 cfg.moe_selection_bias)
        self.moe = MonetMoE(cfg.hidden_size, cfg.moe_experts, cfg.moe_dim, cfg.moe_heads, cfg.moe_decompose, router)
        self.hook_resid_pre = hook_point()  # [batch, pos, d_model]
        self.hook_attn_out = hook_point()  # [batch, pos, d_model]
        self.hook_resid_mid = hook_point()  # [batch, pos, d_model]
        self.hook_mlp_out = hook_point()  # [batch, pos, d_model] (the MoE output)
        self.hook_resid_post = hook_point()  # [batch, pos, d_model]

    @property
    def is_router_layer(self) -> bool:
        return self.moe.router is not None

    def forward(
        self,
        resid: Float[torch.Tensor, "batch pos d_model"],
        routing: RoutingFactors | None,
        positions: Int[torch.Tensor, "batch pos"],
        key_mask: Bool[torch.Tensor, "batch key_pos"] | None = None,
        cache: KeyValueCache | None = None,
    ) -> tuple[Float[torch.Tensor, "batch pos d_model"], RoutingFactors]:
        resid = self.hook_resid_pre(resid)
        attn_out = self.hook_attn_out(self.attn(self.ln1(resid), positions, key_mask, cache, self.layer))
        resid = self.hook_resid_mid(resid + attn_out)
        normed = self.ln2(resid)
        if self.is_router_layer:
            routing = self.moe.route(normed)
        mlp_out = self.hook_mlp_out(self.moe(normed, routing.g_row, routing.g_col))
        return self.hook_resid_post(resid + mlp_out), routing
