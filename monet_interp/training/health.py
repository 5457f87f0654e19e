"""Expert health after training: which experts the routers ever use on held-out data.

For every routing group (router layer) of a MONET model, over the given batches (routers in eval
mode with their running statistics, as at inference):

- ``dead_row_share`` / ``dead_col_share``: share of bottom halves i / top halves j that no head
  ever routes to (g1[h,i] > 0 resp. g2[h,j] > 0 for no token and no head);
  ``dead_row_share_per_head``: the same per head, averaged over heads.
- ``dead_pair_share``: share of experts (i, j) never routed, i.e. no token and no head with
  g1[h,i] > 0 and g2[h,j] > 0 together. Computed without the E^2 expansion per token: the pair
  counts of head h are the [E, E] matrix (g1_h > 0)^T (g2_h > 0) accumulated over tokens.
- ``max_vio``: maximal load violation, max_e (load_e - mean load) / mean load over heads and both
  factors (load = share of tokens keeping the expert); 0 for perfectly even load.
- ``mean_kept_row`` / ``mean_kept_col``: mean number of experts kept per head and token.
- ``l_unif`` / ``l_amb``: the auxiliary losses over all evaluated tokens (gbar over all of them).

For the dense baseline, ``neuron_health`` gives the share of MLP neurons never positive.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from monet_interp.training.losses import max_load_violation, routing_probs


@torch.no_grad()
def expert_health(model: Any, batches: Iterable[torch.Tensor]) -> dict[str, Any]:
    """Routing statistics of a HookedMONET over ``batches`` of token ids (see the module docstring)."""
    cfg = model.cfg
    heads, experts = cfg.moe_heads, cfg.moe_experts
    was_training = model.training
    routers_modules = [block.moe.router for block in model.blocks if block.moe.router is not None]
    batch_stats = [router.use_batch_stats for router in routers_modules]  # restored as they were
    model.eval()
    model.set_router_batch_stats(False)
    stats: list[dict[str, torch.Tensor]] = []
    n_tokens = 0
    try:
        for batch in batches:
            _, routers = model(batch.to(model.device), return_type=None, return_routing=True)
            if not stats:
                stats = [{"count_row": torch.zeros(heads, experts, dtype=torch.float64),
                          "count_col": torch.zeros(heads, experts, dtype=torch.float64),
                          "pairs": torch.zeros(heads, experts, experts, dtype=torch.float64),
                          "prob_row": torch.zeros(heads, experts, dtype=torch.float64),
                          "prob_col": torch.zeros(heads, experts, dtype=torch.float64),
                          "amb": torch.zeros((), dtype=torch.float64),
                          "kept_row": torch.zeros((), dtype=torch.float64),
                          "kept_col": torch.zeros((), dtype=torch.float64)} for _ in routers]
            n_tokens += batch.shape[0] * batch.shape[1]
            for acc, routing in zip(stats, routers):
                on_row = (routing.g_row > 0).flatten(0, -3).float()  # [tokens, head, expert]
                on_col = (routing.g_col > 0).flatten(0, -3).float()
                prob_row, prob_col = (p.flatten(0, -3).double() for p in routing_probs(routing))
                acc["count_row"] += on_row.sum(0).double()
                acc["count_col"] += on_col.sum(0).double()
                acc["pairs"] += torch.einsum("nhi,nhj->hij", on_row, on_col).double()
                acc["prob_row"] += prob_row.sum(0)
                acc["prob_col"] += prob_col.sum(0)
                acc["amb"] += 0.5 * ((1 - prob_row.amax(-1)).mean(-1).sum() + (1 - prob_col.amax(-1)).mean(-1).sum())
                acc["kept_row"] += on_row.sum(-1).mean(-1).sum().double()
                acc["kept_col"] += on_col.sum(-1).mean(-1).sum().double()
    finally:
        model.train(was_training)
        for router, used in zip(routers_modules, batch_stats):
            router.use_batch_stats = used
    if not stats:
        raise ValueError("expert_health needs at least one batch")
    groups = []
    for group, acc in enumerate(stats):
        gbar_row, gbar_col = acc["prob_row"] / n_tokens, acc["prob_col"] / n_tokens
        unif = -0.5 * (torch.log(gbar_row + 1e-9).mean() + torch.log(gbar_col + 1e-9).mean())
        groups.append({
            "group": group,
            "layers": cfg.layers_of_group(group),
            "dead_row_share": float((acc["count_row"].sum(0) == 0).double().mean()),
            "dead_col_share": float((acc["count_col"].sum(0) == 0).double().mean()),
            "dead_row_share_per_head": float((acc["count_row"] == 0).double().mean()),
            "dead_col_share_per_head": float((acc["count_col"] == 0).double().mean()),
            "dead_pair_share": float((acc["pairs"].sum(0) == 0).double().mean()),
            "dead_pair_share_per_head": float((acc["pairs"] == 0).double().mean()),
            "max_vio": max(max_load_violation(acc["count_row"]), max_load_violation(acc["count_col"])),
            "mean_kept_row": float(acc["kept_row"] / n_tokens),
            "mean_kept_col": float(acc["kept_col"] / n_tokens),
            "l_unif": float(unif),
            "l_unif_minus_log_e": float(unif) - float(torch.log(torch.tensor(float(experts)))),
            "l_amb": float(acc["amb"] / n_tokens),
        })
    keys = [k for k in groups[0] if k not in ("group", "layers")]
    overall = {k: sum(g[k] for g in groups) / len(groups) for k in keys}
    return {"kind": "monet", "tokens": n_tokens, "experts_per_group": experts * experts, "groups": groups,
            "overall": overall}


@torch.no_grad()
def neuron_health(model: Any, batches: Iterable[torch.Tensor]) -> dict[str, Any]:
    """Dense baseline: share of MLP neurons (``blocks.{l}.mlp.hook_post``) never > 0 on ``batches``."""
    was_training = model.training
    model.eval()
    layers = model.cfg.num_hidden_layers
    alive = [torch.zeros(model.cfg.intermediate_size, dtype=torch.bool) for _ in range(layers)]
    n_tokens = 0

    def make_hook(layer: int):
        def hook(act: torch.Tensor, hook: Any) -> None:
            alive[layer] |= (act > 0).flatten(0, -2).any(0).cpu()
        return hook

    hooks = [(f"blocks.{layer}.mlp.hook_post", make_hook(layer)) for layer in range(layers)]
    for batch in batches:
        model.run_with_hooks(batch.to(model.device), return_type=None, fwd_hooks=hooks)
        n_tokens += batch.numel()
    model.train(was_training)
    per_layer = [float((~a).double().mean()) for a in alive]
    return {"kind": "dense", "tokens": n_tokens, "dead_neuron_share_per_layer": per_layer,
            "overall": {"dead_neuron_share": sum(per_layer) / len(per_layer)}}


def model_health(model: Any, batches: Iterable[torch.Tensor]) -> dict[str, Any]:
    """``expert_health`` for MONET models, ``neuron_health`` for the dense baseline."""
    if hasattr(model.cfg, "moe_experts"):
        return expert_health(model, batches)
    return neuron_health(model, batches)


def health_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The compact per-group figures of a MONET health report (one history.jsonl record)."""
    keys = ("dead_pair_share", "dead_row_share", "dead_col_share", "max_vio", "mean_kept_row", "mean_kept_col")
    return {key: [round(g[key], 5) for g in report["groups"]] for key in keys}


def format_health(report: dict[str, Any]) -> str:
    """A short human-readable table of a health report."""
    if report["kind"] == "dense":
        shares = ", ".join(f"{s:.1%}" for s in report["dead_neuron_share_per_layer"])
        return f"dense baseline, {report['tokens']} tokens: dead MLP neurons per layer: {shares}"
    lines = [f"expert health over {report['tokens']} tokens ({report['experts_per_group']} experts per group)",
             "group  dead i  dead j  dead (i,j)  dead i/head  kept i  kept j   L_unif  L_amb"]
    for g in report["groups"]:
        lines.append(f"{g['group']:5d}  {g['dead_row_share']:6.1%}  {g['dead_col_share']:6.1%}  "
                     f"{g['dead_pair_share']:10.1%}  {g['dead_row_share_per_head']:11.1%}  {g['mean_kept_row']:6.2f}  "
                     f"{g['mean_kept_col']:6.2f}  {g['l_unif']:7.4f}  {g['l_amb']:.4f}")
    return "\n".join(lines)
