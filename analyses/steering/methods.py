"""The intervention each method applies for one concept, from the label statistics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from monet_interp.analyses.steering.config import SteeringConfig
from monet_interp.analyses.steering.label_stats import LabelStats
from monet_interp.analyses.steering.models import is_monet, is_top1
from monet_interp.analyses.steering.selection import (
    diffmean_vectors,
    select_monet_experts,
    select_monet_experts_by_attribution,
    select_sae_features,
    select_top1_targets,
)
from monet_interp.editing.interventions import AddVector, ExpertBoost, Intervention, Top1Replace
from monet_interp.editing.router_steering import RouterLogitSteer


def choose_interventions(model: Any, stats: LabelStats, windows: Mapping[str, Tensor], concept: str,
                         others: Sequence[str], methods: Sequence[str], cfg: SteeringConfig,
                         saes: Mapping[int, Any]) -> dict[str, Intervention]:
    """{method: intervention toward ``concept``} for the methods that apply to ``model`` (a dense
    model gets "sae" and "diffmean"; "top1" needs top-1 routing unless cfg.top1_any_routing;
    "sae" needs SAEs)."""
    monet, top1 = is_monet(model), is_top1(model)
    n_layers = model.cfg.num_hidden_layers
    interventions: dict[str, Intervention] = {}
    for method in methods:
        if method == "monet":
            if not monet:
                continue
            heads = list(cfg.monet_heads) if cfg.monet_heads is not None else None
            groups = list(cfg.monet_groups) if cfg.monet_groups is not None else None
            if cfg.monet_layers is not None:
                groups = sorted({model.cfg.group_of_layer(l) for l in cfg.monet_layers})
            if cfg.monet_selection == "skew":
                experts, scores = select_monet_experts(stats, concept, cfg.monet_k, groups, heads, others,
                                                       rank=cfg.rank)
            else:
                experts, scores = select_monet_experts_by_attribution(model, windows, concept, cfg.monet_k,
                                                                      groups, others)
            interventions[method] = ExpertBoost(experts, cfg.monet_op, heads, cfg.monet_layers, scores)
        elif method == "top1":
            if not monet or not (top1 or cfg.top1_any_routing):
                continue
            targets, scores = select_top1_targets(stats, concept, cfg.top1_heads,
                                                  cfg.top1_groups, others, rank=cfg.rank)
            interventions[method] = Top1Replace(targets, cfg.top1_gate, scores=scores)
        elif method == "steermoe":
            if not monet:
                continue
            n_heads = cfg.steermoe_heads if cfg.steermoe_heads is not None else model.cfg.moe_heads
            targets, scores = select_top1_targets(stats, concept, n_heads, cfg.steermoe_groups, others,
                                                  rank=cfg.rank)
            interventions[method] = RouterLogitSteer(targets, cfg.steermoe_mode, scores=scores)
        elif method == "diffmean":
            layers = list(cfg.diffmean_layers) if cfg.diffmean_layers is not None else list(range(n_layers))
            vecs = diffmean_vectors(stats, concept, layers, cfg.diffmean_site, others)
            interventions[method] = AddVector(vecs, {"site": cfg.diffmean_site, "layers": layers}, "diffmean")
        elif method == "sae":
            if not saes:
                continue
            norms = None
            if cfg.sae_scale == "diffmean":
                norms = {n: float(v.norm()) for n, v in
                         diffmean_vectors(stats, concept, list(saes), "mlp_out", others).items()}
            vecs, feats = select_sae_features(stats, saes, concept, cfg.sae_k, others, rank=cfg.rank,
                                              scale_to=norms)
            interventions[method] = AddVector(vecs, {"features": feats}, "sae")
    return interventions


__all__ = ["choose_interventions"]
