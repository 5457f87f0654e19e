"""Selection rules: which units to remove for a forget label, from per-label statistics
[labels, units] (the 2x rule, the selective-pruning ratio, random controls), and where a curve's
operating point lies."""

from __future__ import annotations

import math
from typing import Any

import torch

from monet_interp.analyses.unlearning.config import UnlearningError


def skew_2x(stats: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(I(target) [N], max over the other labels of I [N]) from per-label statistics [L, N]."""
    if stats.dim() != 2 or not 0 <= target < stats.shape[0]:
        raise UnlearningError(f"expected [labels, units] statistics and a label index, got {tuple(stats.shape)}, "
                              f"{target}")
    own = stats[target]
    others = torch.cat([stats[:target], stats[target + 1:]])
    rival = others.max(0).values if len(others) else torch.zeros_like(own)
    return own, rival


def select_2x(stats: torch.Tensor, target: int, factor: float = 2.0, min_value: float = 0.0) -> torch.Tensor:
    """MONET's rule: units u with I(target, u) > min_value and I(target, u) >= factor * max over the
    other labels of I(., u). Returned most skewed first (I(target) / rival; ties by I(target))."""
    own, rival = skew_2x(stats, target)
    chosen = ((own > min_value) & (own >= factor * rival)).nonzero().flatten()
    if chosen.numel() == 0:
        return chosen
    skew = own[chosen] / rival[chosen].clamp_min(1e-300)
    key = torch.stack([skew, own[chosen]], 1)
    order = sorted(range(len(chosen)), key=lambda k: (-float(key[k, 0]), -float(key[k, 1]), int(chosen[k])))
    return chosen[torch.tensor(order, dtype=torch.long)]


def ratio_scores(i_forget: torch.Tensor, i_retain: torch.Tensor, eps: float = 0.01, relative: bool = True) -> torch.Tensor:
    """Selective-pruning score I(F) / (I(R) + eps'), eps' = eps * mean(I(R)) when ``relative``
    (a scale-free eps; falls back to eps when I(R) is 0 everywhere), else eps."""
    scale = float(i_retain.mean()) if relative else 1.0
    eps_abs = eps * scale if scale > 0 else eps
    return i_forget / (i_retain + eps_abs)


def rank_units(scores: torch.Tensor, tiebreak: torch.Tensor | None = None,
               exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Unit ids by descending score (ties: larger ``tiebreak``, then smaller id), without ``exclude``."""
    n = scores.numel()
    tb = tiebreak if tiebreak is not None else torch.zeros_like(scores)
    ids = torch.arange(n)
    # lexsort: stable sorts from the least significant key up
    order = torch.argsort(-tb.double(), stable=True)
    order = order[torch.argsort(-scores.double()[order], stable=True)]
    if exclude is not None and exclude.numel():
        mask = torch.ones(n, dtype=torch.bool)
        mask[exclude] = False
        order = order[mask[order]]
    return ids[order]


def select_ratio(i_forget: torch.Tensor, i_retain: torch.Tensor, count: int, eps: float = 0.01,
                 exclude: torch.Tensor | None = None) -> torch.Tensor:
    """The ``count`` units with the largest selective-pruning score (see :func:`ratio_scores`)."""
    order = rank_units(ratio_scores(i_forget, i_retain, eps), tiebreak=i_forget, exclude=exclude)
    return order[:max(0, int(count))]


def select_random(n_units: int, count: int, seed: int = 0, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """``count`` distinct uniformly random unit ids (reproducible from ``seed``)."""
    gen = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(n_units, generator=gen)
    if exclude is not None and exclude.numel():
        mask = torch.ones(n_units, dtype=torch.bool)
        mask[exclude] = False
        order = order[mask[order]]
    return order[:max(0, min(int(count), len(order)))]



def forget_retain(stats: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """I(forget) [N] and I(retain) [N] = unweighted mean over every other label."""
    others = torch.cat([stats[:target], stats[target + 1:]])
    return stats[target], others.mean(0)



def budget_point(curve: list[dict[str, Any]], budget: float) -> int:
    """Index of the point with the largest forget top-1 drop among those whose retain top-1 drop
    is <= budget (the first point if none is)."""
    ok = [k for k, row in enumerate(curve) if row["d_retain_top1"] >= -budget]
    if not ok:
        return 0
    return min(ok, key=lambda k: (curve[k]["d_forget_top1"], curve[k]["n_removed"]))



def refine_target(curve: list[dict[str, Any]], budget: float) -> int | None:
    """A count between the operating point and the next larger count over the budget (geometric
    mean), or None when there is nothing to refine."""
    op = curve[budget_point(curve, budget)]
    lo = op["n_removed"]
    if op["d_retain_top1"] < -budget:  # even the smallest point is over budget: look below it
        mid = int(round(lo / 2))
        return mid if 0 < mid < lo and all(r["n_removed"] != mid for r in curve) else None
    above = [r["n_removed"] for r in curve if r["n_removed"] > lo and r["d_retain_top1"] < -budget]
    if not above:
        return None
    mid = int(round(math.sqrt(lo * min(above))))
    return mid if lo < mid < min(above) and all(r["n_removed"] != mid for r in curve) else None



__all__ = ["budget_point", "forget_retain", "rank_units", "ratio_scores", "refine_target", "select_2x", "select_random",
           "select_ratio", "skew_2x"]
