"""SteerMoE-style router steering (Fayyaz et al. 2025): (de)activate experts before routing.

    from monet_interp.editing.router_steering import RouterLogitSteer
    steer = RouterLogitSteer({0: {1: (3, 7)}}, mode="activate")   # group 0, head 1: row 3, column 7
    with steer.context(model, alpha=1.0):
        text = model.generate("def main():", max_new_tokens=40)

The raw router logits of chosen experts are forced at ``hook_router_logits_row/_col`` of each
group's router layer, so the router itself selects (or drops) them and g follows from its softmax.
Forcing acts on the router's *selection score* (:meth:`MonetRouter.selection_affine`: the
BatchNorm-normalised logit plus selection bias for "threshold" routing, the raw logit plus bias for
"topk"/"top1"), so the outcome holds whatever the biases and running statistics are. In a
product-key MONET expert (i, j) of head h is row i and column j, so deactivating it drops every
expert of row i and column j of that head (the factors cannot single out one pair).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from monet_interp.editing.interventions import Intervention

MODES = ("activate", "deactivate")


def force_router_logits(logits: Float[Tensor, "batch pos head expert"], targets: Mapping[int, Sequence[int]],
                        mode: str = "activate", margin: float = 1.0, router: Any = None,
                        side: str = "row") -> Float[Tensor, "batch pos head expert"]:
    """Raw router logits with the listed experts of each head forced (a new tensor).

    targets {head: [expert index, ...]} (row indices i on the g1 logits, column indices j on g2's).
    router: the ``MonetRouter`` that routes these logits, ``side`` "row" (g1) or "col" (g2); its
    selection score s = scale * (logit - center) + bias decides which experts are kept. Without a
    router the score is the raw logit (no bias).

    activate: each listed logit is set to the raw logit at which its score equals the head's
    largest score at that token, plus ``margin`` (in raw-logit units), so the router keeps it
    whatever its rule (threshold, top-k, top-1) and its softmax share grows with margin.
    deactivate: the raw logit at which its score equals the head's smallest score (and, for
    threshold routing, the threshold sigma, below which nothing is kept), minus ``margin``, so it
    is dropped (a head always keeps its best expert, so deactivating every expert of a head is
    refused). With zero biases and top-k/top-1 routing this is head max + margin / head min - margin
    of the raw logits. Threshold routing uses the running statistics (inference); under batch
    statistics (training) the forced logits also move the statistics."""
    if mode not in MODES:
        raise ValueError(f"mode must be 'activate' or 'deactivate', got {mode!r}")
    n_exp = logits.shape[-1]
    if router is None:
        scale = torch.ones(logits.shape[-2], 1, dtype=logits.dtype, device=logits.device)
        center, bias, floor = scale * 0, torch.zeros(logits.shape[-2:], dtype=logits.dtype, device=logits.device), None
    else:
        scale, center, bias = (t.to(device=logits.device, dtype=logits.dtype) for t in router.selection_affine(side))
        floor = router.selection_floor
    score = scale * (logits - center) + bias
    out = logits.clone()
    for head, index in targets.items():
        idx = sorted({int(e) for e in index})
        if not idx:
            continue
        if mode == "deactivate" and len(idx) >= n_exp:
            raise ValueError(f"cannot deactivate all {n_exp} experts of head {head}: routing keeps at least one")
        row, row_score, b = logits[..., head, :], score[..., head, :], bias[head]
        ref = (row_score.argmax if mode == "activate" else row_score.argmin)(-1, keepdim=True)
        # the raw logit of each target at which its score equals the reference expert's score
        raw = row.gather(-1, ref) + (b[ref] - b[idx]) / scale[head]
        if mode == "activate":
            raw = raw + margin
        else:
            if floor is not None:  # below the threshold sigma too: a score under it is never kept
                raw = torch.minimum(raw, center[head] + (floor - b[idx]) / scale[head])
            raw = raw - margin
        out[..., head, idx] = raw.expand(*row.shape[:-1], len(idx))
    return out


class RouterLogitSteer(Intervention):
    """SteerMoE baseline: (de)activate experts by forcing router logits before routing.

    targets: {group: {head: (i, j)}} (as ``analyses.steering.select_top1_targets`` returns) or
    {group: {head: [(i, j), ...]}}: row i is forced on the group's g1 logits and column j on its g2
    logits, at the router layer of the group (so every layer of the group routes that way).
    mode "activate" / "deactivate"; alpha is the margin of :func:`force_router_logits` (raw-logit
    units above the head's best score / below its worst). alpha = 0 attaches nothing (the
    no-intervention convention of the interventions).
    """

    method = "steermoe"

    def __init__(self, targets: Mapping[int, Mapping[int, Any]], mode: str = "activate",
                 scores: Mapping[int, Mapping[int, float]] | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be 'activate' or 'deactivate', got {mode!r}")
        self.targets: dict[int, dict[int, list[tuple[int, int]]]] = {}
        for g, heads in targets.items():
            per_head = {}
            for h, experts in heads.items():
                single = len(experts) == 2 and all(isinstance(e, (int, np.integer)) for e in experts)
                pairs = [tuple(experts)] if single else list(experts)
                per_head[int(h)] = [(int(i), int(j)) for i, j in pairs]
            self.targets[int(g)] = per_head
        self.mode, self.scores = mode, scores

    def hooks(self, model: Any, alpha: float) -> list[tuple[str, Callable]]:
        cfg = model.cfg
        out: list[tuple[str, Callable]] = []
        for group, heads in self.targets.items():
            if not 0 <= group < cfg.num_routers:
                raise ValueError(f"routing group {group} does not exist (this model has {cfg.num_routers})")
            layer = cfg.router_layers[group]
            router = model.blocks[layer].moe.router
            for side, pick in (("row", 0), ("col", 1)):
                per_head = {h: [pair[pick] for pair in pairs] for h, pairs in heads.items()}

                def hook(logits, hook, per_head=per_head, side=side, router=router):
                    return force_router_logits(logits, per_head, self.mode, float(alpha), router, side)

                out.append((f"blocks.{layer}.moe.hook_router_logits_{side}", hook))
        return out

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "mode": self.mode,
                "targets": [{"group": g, "head": h, "i": i, "j": j,
                             **({"score": float(self.scores[g][h])} if self.scores else {})}
                            for g, heads in self.targets.items() for h, pairs in heads.items() for i, j in pairs]}


__all__ = ["MODES", "RouterLogitSteer", "force_router_logits"]
