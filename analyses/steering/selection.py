"""Choosing the units each method steers with: experts, top-1 targets, SAE features, DiffMean."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from monet_interp.analyses.steering.label_stats import LabelStats
from monet_interp.analyses.steering.models import hook_name, sae_decoder


def _check_rank(rank: str) -> None:
    if rank not in ("usage", "skew"):
        raise ValueError(f"rank must be 'usage' or 'skew', got {rank!r}")


def _target_and_others(stats: LabelStats, target: str, others: Sequence[str] | None) -> tuple[int, list[int]]:
    """Label index of ``target`` and of its rivals (default: every other label)."""
    return stats.index(target), [stats.index(o) for o in (others or [l for l in stats.labels if l != target])]


def _rank_key(usage: Tensor, skew: Tensor, ok: Tensor, rank: str, min_skew: float) -> Tensor:
    """Sort key over units (higher first; < 0: not a candidate). rank="usage": candidates passing
    the 2x rule (skew >= min_skew) first, by usage, then the other candidates by skew;
    rank="skew": candidates by skew."""
    if rank == "usage":
        passed = ok & (skew >= min_skew)
        return torch.where(passed, 1e6 + usage / usage.max().clamp_min(1e-30),
                           torch.where(ok, skew / (skew.max() + 1), -1.0))
    return torch.where(ok, skew, torch.full_like(skew, -1.0))


def _skew(target: Tensor, others: Tensor, eps: float) -> Tensor:
    """(target + eps) / (max over others + eps); others has the label axis first."""
    rival = others.max(0).values if others.shape[0] else torch.zeros_like(target)
    return (target + eps) / (rival + eps)


def select_monet_experts(stats: LabelStats, target: str, k: int = 4, groups: Sequence[int] | None = None,
                         heads: Sequence[int] | None = None, others: Sequence[str] | None = None,
                         min_score: float | None = None, rank: str = "usage", min_skew: float = 2.0,
                         eps: float = 1e-6) -> tuple[list[tuple[int, int, int]], list[float]]:
    """k experts per routing group specialised in ``target`` by label skew of the routing score.

    skew_e = r_e(c) / max_{D != c} r_e(D) (r summed over ``heads``, default all). Candidates:
    r_e(c) >= min_score (default: the mean of r_e(c) over the group's E^2 experts), so rarely
    routed experts with a noisy ratio are skipped. rank="usage" (default): among candidates that
    pass the MONET 2x rule (skew >= min_skew), the k most used on the concept (highest r_e(c));
    if fewer pass, the rest by skew. rank="skew": the k largest skews.
    Returns ([(group, i, j)], [skew of each]).
    """
    if stats.routing is None:
        raise ValueError("these statistics have no routing (not a MONET model)")
    _check_rank(rank)
    t, other_idx = _target_and_others(stats, target, others)
    n_groups, n_heads, n_exp = stats.routing.shape[1], stats.routing.shape[2], stats.routing.shape[3]
    head_idx = list(range(n_heads)) if heads is None else list(heads)
    score = stats.routing[:, :, head_idx].sum(2).double()  # [labels, G, E, E]
    chosen, skews = [], []
    for g in (range(n_groups) if groups is None else groups):
        r_t = score[t, g].flatten()
        floor = float(r_t.mean()) if min_score is None else min_score
        sk = _skew(r_t, score[other_idx, g].flatten(1), eps)
        key = _rank_key(r_t, sk, r_t >= floor, rank, min_skew)
        for e in torch.argsort(key, descending=True, stable=True)[:k].tolist():
            if key[e] < 0:
                continue
            i, j = divmod(e, n_exp)
            chosen.append((int(g), i, j))
            skews.append(float(sk[e]))
    return chosen, skews


def select_monet_experts_by_attribution(model: Any, windows: Mapping[str, Tensor], target: str, k: int = 4,
                                        groups: Sequence[int] | None = None, others: Sequence[str] | None = None,
                                        max_windows: int = 4) -> tuple[list[tuple[int, int, int]], list[float]]:
    """Top-k experts per group by how much scaling them up lowers the loss on target text more
    than on other text: score = -dL_c/dS + mean_D dL_D/dS (expert_attribution, first order)."""
    from monet_interp.editing import expert_attribution

    group_list = list(range(model.cfg.num_routers)) if groups is None else list(groups)

    def attribution(label: str) -> Tensor:
        toks = windows[label][:max_windows].to(model.device)
        return expert_attribution(model, toks, groups=group_list).double().cpu()

    score = -attribution(target)
    rivals = [o for o in (others or [l for l in windows if l != target])]
    if rivals:
        score = score + torch.stack([attribution(o) for o in rivals]).mean(0)
    n_exp = model.cfg.moe_experts
    chosen, values = [], []
    for gi, g in enumerate(group_list):
        flat = score[gi].flatten()
        for e in torch.argsort(flat, descending=True, stable=True)[:k].tolist():
            i, j = divmod(e, n_exp)
            chosen.append((g, i, j))
            values.append(float(flat[e]))
    return chosen, values


def select_top1_targets(stats: LabelStats, target: str, n_heads: int = 1, groups: Sequence[int] | None = None,
                        others: Sequence[str] | None = None, rank: str = "usage", min_skew: float = 2.0,
                        eps: float = 1e-6) -> tuple[dict[int, dict[int, tuple[int, int]]], dict[int, dict[int, float]]]:
    """For each group, ``n_heads`` heads and the concept expert each should switch to.

    Per head h, r_h(c) is the head's mean weight on (i, j) over the concept's tokens; candidates
    have r_h(c) >= its mean over the E^2 experts. rank="usage" (default): the head's most used
    candidate passing the 2x rule (skew >= min_skew), heads ordered by that usage (heads with no
    passing expert come last, by skew); rank="skew": the largest skew, heads ordered by it.
    Returns ({group: {head: (i, j)}}, {group: {head: skew}}).
    """
    if stats.routing is None:
        raise ValueError("these statistics have no routing (not a MONET model)")
    _check_rank(rank)
    t, other_idx = _target_and_others(stats, target, others)
    n_groups, heads, n_exp = stats.routing.shape[1], stats.routing.shape[2], stats.routing.shape[3]
    targets: dict[int, dict[int, tuple[int, int]]] = {}
    scores: dict[int, dict[int, float]] = {}
    for g in (range(n_groups) if groups is None else groups):
        best = []
        for h in range(heads):
            r_t = stats.routing[t, g, h].double().flatten()
            sk = _skew(r_t, stats.routing[other_idx, g, h].double().flatten(1), eps)
            key = _rank_key(r_t, sk, r_t >= r_t.mean(), rank, min_skew)
            e = int(key.argmax())
            best.append((float(key[e]), h, divmod(e, n_exp), float(sk[e])))
        best.sort(key=lambda b: (-b[0], b[1]))
        chosen = [b for b in best[:n_heads] if b[0] >= 0]
        targets[int(g)] = {h: ij for _, h, ij, _ in chosen}
        scores[int(g)] = {h: skew for _, h, _, skew in chosen}
    return targets, scores


def diffmean_vectors(stats: LabelStats, target: str, layers: Sequence[int], site: str = "mlp_out",
                     others: Sequence[str] | None = None) -> dict[str, Tensor]:
    """{hook name: mean(target) - mean over other labels of their means} at each layer."""
    table = {"mlp_out": stats.mlp_out, "resid_post": stats.resid_post}.get(site)
    if table is None:
        raise ValueError(f"DiffMean statistics exist for sites 'mlp_out' and 'resid_post', not {site!r}")
    t, other_idx = _target_and_others(stats, target, others)
    return {hook_name(l, site): table[t, l] - table[other_idx, l].mean(0) for l in layers}


def select_sae_features(stats: LabelStats, saes: Mapping[int, Any], target: str, k: int = 4,
                        others: Sequence[str] | None = None, rank: str = "usage", min_skew: float = 2.0,
                        scale_to: Mapping[str, float] | None = None, eps: float = 1e-6
                        ) -> tuple[dict[str, Tensor], list[dict[str, Any]]]:
    """k features per SAE layer by label skew of their mean activation, and the steering vector.

    skew_f = mean_f(c) / max_{D != c} mean_f(D); candidates have mean_f(c) >= the mean over
    features. rank="usage" (default): features passing the 2x rule, most active on the concept
    first (then the rest by skew); rank="skew": largest skew. The vector is sum_k a_k d_k with a_k
    the feature's mean activation where it fires on the concept; with ``scale_to`` {hook name:
    norm} it is rescaled to that L2 norm (e.g. the DiffMean vector's, so that alpha means the same
    push size for both methods and only the direction differs).
    """
    _check_rank(rank)
    t, other_idx = _target_and_others(stats, target, others)
    vectors, chosen = {}, []
    for layer, sae in saes.items():
        mean = stats.sae_mean[layer].double()
        m_t = mean[t]
        sk = _skew(m_t, mean[other_idx], eps)
        key = _rank_key(m_t, sk, (m_t > 0) & (m_t >= m_t.mean()), rank, min_skew)
        order = torch.argsort(key, descending=True, stable=True)[:k].tolist()
        dec = sae_decoder(sae).detach().float().cpu()
        vec = torch.zeros(dec.shape[1])
        for f in order:
            if key[f] < 0:
                continue
            a = float(stats.sae_active_mean[layer][t, f])
            vec += a * dec[f]
            chosen.append({"layer": layer, "feature": f, "skew": float(sk[f]), "mean_active": a})
        name = hook_name(layer, "mlp_out")
        if scale_to is not None and name in scale_to and float(vec.norm()) > 0:
            vec = vec * (float(scale_to[name]) / float(vec.norm()))
        vectors[name] = vec
    return vectors, chosen


__all__ = ["diffmean_vectors", "select_monet_experts", "select_monet_experts_by_attribution", "select_sae_features",
           "select_top1_targets"]
