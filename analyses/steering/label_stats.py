"""Per-label means of activations, routing and SAE features: what the selections rank."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from monet_interp.analyses.steering.models import is_monet, sae_decoder, sae_encode


@dataclass
class LabelStats:
    """Per-label means from one pass over windows of each label (train split).

    routing [n_labels, G, H, E, E]: mean per token of g_row[h,i] g_col[h,j] (summing over heads
    gives the routing score r_e(D) of evals.md); mlp_out / resid_post [n_labels, L, d]: mean
    activations; sae_mean / sae_active_mean {layer: [n_labels, F]}: mean feature activation and
    mean activation where the feature fires.
    """

    labels: list[str]
    n_tokens: list[int]
    mlp_out: Tensor
    resid_post: Tensor
    routing: Tensor | None = None
    sae_mean: dict[int, Tensor] = field(default_factory=dict)
    sae_active_mean: dict[int, Tensor] = field(default_factory=dict)

    def index(self, label: str) -> int:
        return self.labels.index(label)


@torch.no_grad()
def collect_label_stats(model: Any, windows: Mapping[str, Tensor], saes: Mapping[int, Any] | None = None,
                        batch_size: int = 8) -> LabelStats:
    """LabelStats of the windows [n, T] of every label: one pass of the shared per-label
    statistics (``monet_interp.stats.label_statistics``) over the MLP outputs and residual stream
    of every layer, the per-head routing weights of every expert (MONET) and the features of the
    given SAEs ({layer: sae} on ``blocks.{l}.hook_mlp_out``)."""
    from monet_interp.stats import label_statistics
    from monet_interp.units import ExpertUnits, HookUnits, sae_features

    cfg = model.cfg
    n_layers, d = cfg.num_hidden_layers, cfg.hidden_size
    saes = dict(saes or {})
    sae_layers = [l for l in range(n_layers) if l in saes]
    units = [HookUnits(f"blocks.{l}.hook_{site}", d) for site in ("mlp_out", "resid_post") for l in range(n_layers)]
    for l in sae_layers:
        dec = sae_decoder(saes[l])
        units.append(sae_features(f"blocks.{l}.hook_mlp_out",
                                  lambda x, sae=saes[l], dtype=dec.dtype: sae_encode(sae, x.to(dtype)), dec.shape[0]))
    monet = is_monet(model)
    if monet:
        units.append(ExpertUnits(model, heads="per-head"))
    stats = label_statistics(model, units, windows, batch_size=batch_size)
    mlp = torch.stack([s.mean for s in stats[:n_layers]], 1)  # [labels, layer, d]
    resid = torch.stack([s.mean for s in stats[n_layers:2 * n_layers]], 1)
    sae_stats = stats[2 * n_layers:2 * n_layers + len(sae_layers)]
    routing = (stats[-1].mean.view(len(windows), cfg.num_routers, cfg.moe_heads, cfg.moe_experts, cfg.moe_experts)
               if monet else None)
    return LabelStats(list(windows), list(stats[0].tokens), mlp.float(), resid.float(), routing,
                      {l: s.mean for l, s in zip(sae_layers, sae_stats)},
                      {l: s.active_mean for l, s in zip(sae_layers, sae_stats)})


__all__ = ["LabelStats", "collect_label_stats"]
