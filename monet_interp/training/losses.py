"""MONET's auxiliary routing losses (paper section "Training"), as small pure functions.

With H routing heads, E experts per half, factors g1 (rows i) and g2 (columns j):

- uniformity:  L_unif = -(1/2H) sum_h sum_i (1/E) log gbar1[h,i]  -  (same for g2)
  gbar = routing probability averaged over the batch's tokens. Minimised (value ln E) when every
  expert receives the same average probability; L_unif - ln E is the KL(uniform || gbar).
- ambiguity:   L_amb = (1/2H) sum_h (1 - max_i g1[h,i]) + (1/2H) sum_h (1 - max_j g2[h,j]),
  averaged over tokens. Zero when every head puts all its mass on one expert.

Both take the *probabilities* the router assigns: for "threshold"/"topk" routing that is g itself
(a softmax over the kept experts, exact zeros elsewhere); for "top1" routing it is the full softmax
``probs_row``/``probs_col`` (the gate alone is one-hot scaled and would make gbar degenerate).
``routing_aux_losses`` picks the right tensor and averages the losses over routing groups.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float

from monet_interp.components.router import RoutingFactors

EPS = 1e-9  # inside the log of L_unif: an expert that no token routes to gives log(eps), not -inf
AUX_WEIGHT = 1e-3  # lambda of the paper


def _mean_over_tokens(
    x: Float[torch.Tensor, "*tokens head expert"], mask: Bool[torch.Tensor, "*tokens"] | None
) -> Float[torch.Tensor, "head expert"]:
    flat = x.reshape(-1, *x.shape[-2:])
    if mask is None:
        return flat.mean(0)
    weights = mask.reshape(-1, 1, 1).to(flat.dtype)
    return (flat * weights).sum(0) / weights.sum().clamp_min(1.0)


def mean_routing_prob(
    probs: Float[torch.Tensor, "*tokens head expert"], mask: Bool[torch.Tensor, "*tokens"] | None = None
) -> Float[torch.Tensor, "head expert"]:
    """gbar[h, e]: the routing probability of expert e in head h averaged over (unmasked) tokens."""
    return _mean_over_tokens(probs.float(), mask)


def uniformity_loss(
    probs_row: Float[torch.Tensor, "*tokens head expert"],
    probs_col: Float[torch.Tensor, "*tokens head expert"],
    mask: Bool[torch.Tensor, "*tokens"] | None = None,
    eps: float = EPS,
) -> Float[torch.Tensor, ""]:
    """L_unif = -(1/2H) sum_h sum_i (1/E) log(gbar1[h,i] + eps) - (same for g2)  (>= ln E)."""
    loss_row = -torch.log(mean_routing_prob(probs_row, mask) + eps).mean()
    loss_col = -torch.log(mean_routing_prob(probs_col, mask) + eps).mean()
    return 0.5 * (loss_row + loss_col)


def ambiguity_loss(
    probs_row: Float[torch.Tensor, "*tokens head expert"],
    probs_col: Float[torch.Tensor, "*tokens head expert"],
    mask: Bool[torch.Tensor, "*tokens"] | None = None,
) -> Float[torch.Tensor, ""]:
    """L_amb = mean over tokens of (1/2H) sum_h [(1 - max_i g1[h,i]) + (1 - max_j g2[h,j])]  (in [0, 1))."""
    amb_row = 1.0 - probs_row.float().amax(-1, keepdim=True)  # [*tokens, head, 1]
    amb_col = 1.0 - probs_col.float().amax(-1, keepdim=True)
    return 0.5 * (_mean_over_tokens(amb_row, mask).mean() + _mean_over_tokens(amb_col, mask).mean())


def routing_probs(routing: RoutingFactors) -> tuple[torch.Tensor, torch.Tensor]:
    """The probabilities the aux losses see: the full softmax for top1 routing, else g."""
    row = routing.probs_row if routing.probs_row is not None else routing.g_row
    col = routing.probs_col if routing.probs_col is not None else routing.g_col
    return row, col


def softmax_probs(routing: RoutingFactors) -> tuple[torch.Tensor, torch.Tensor]:
    """The full softmax over all experts of the raw router logits (needs logits_row/logits_col)."""
    if routing.logits_row is None or routing.logits_col is None:
        raise ValueError("full-softmax probabilities need the raw logits (RoutingFactors of a router layer)")
    return torch.softmax(routing.logits_row.float(), -1), torch.softmax(routing.logits_col.float(), -1)


UNIF_PROBS = ("routed", "softmax")


def routing_aux_losses(
    routers: list[RoutingFactors], mask: Bool[torch.Tensor, "*tokens"] | None = None, eps: float = EPS,
    unif_probs: str = "routed",
) -> tuple[Float[torch.Tensor, ""], Float[torch.Tensor, ""]]:
    """(L_unif, L_amb), each averaged over the routing groups (one entry per router layer).

    ``unif_probs="routed"`` (default, the paper's wording): L_unif averages the routing probabilities
    g (the full softmax for top1). ``"softmax"``: L_unif averages the full softmax of the raw logits
    for every routing rule, so experts that no token keeps still receive gradient (with "routed"
    they get none: their g is exactly 0). L_amb always uses ``routing_probs``."""
    if not routers:
        raise ValueError("routing_aux_losses needs the RoutingFactors of at least one router layer")
    if unif_probs not in UNIF_PROBS:
        raise ValueError(f"unif_probs={unif_probs!r}: expected one of {UNIF_PROBS}")
    unif, amb = [], []
    for routing in routers:
        row, col = routing_probs(routing)
        amb.append(ambiguity_loss(row, col, mask))
        if unif_probs == "softmax":
            row, col = softmax_probs(routing)
        unif.append(uniformity_loss(row, col, mask, eps))
    return torch.stack(unif).mean(), torch.stack(amb).mean()


def router_z_loss(routers: list[RoutingFactors]) -> Float[torch.Tensor, ""]:
    """Router z-loss (ST-MoE): mean over tokens and heads of logsumexp(logits)^2, both factors,
    averaged over routing groups. Keeps the raw logits small so no expert's softmax saturates."""
    if not routers:
        raise ValueError("router_z_loss needs the RoutingFactors of at least one router layer")
    losses = []
    for routing in routers:
        if routing.logits_row is None or routing.logits_col is None:
            raise ValueError("router_z_loss needs the raw logits (RoutingFactors of a router layer)")
        row = torch.logsumexp(routing.logits_row.float(), -1).square().mean()
        col = torch.logsumexp(routing.logits_col.float(), -1).square().mean()
        losses.append(0.5 * (row + col))
    return torch.stack(losses).mean()


def expert_load(g: Float[torch.Tensor, "*tokens head expert"]) -> Float[torch.Tensor, "head expert"]:
    """load[h, e]: share of tokens whose head h keeps expert e (g > 0)."""
    return (g.detach() > 0).reshape(-1, *g.shape[-2:]).float().mean(0)


def max_load_violation(load: Float[torch.Tensor, "head expert"]) -> float:
    """MaxVio = max_e (load_e - mean load) / mean load, worst head (0 for perfectly even load)."""
    mean = load.mean(-1, keepdim=True).clamp_min(1e-12)
    return float(((load - mean) / mean).amax())


BALANCE_TARGETS = ("absolute", "mean")


def balance_bias_step(bias: Float[torch.Tensor, "head expert"], load: Float[torch.Tensor, "head expert"],
                      rate: float, target: str = "absolute", target_load: float | None = None) -> None:
    """Loss-free balancing of the selection biases, in place (under no_grad).

    ``target="absolute"``: bias += rate * sign(target_load - load), not centred, with
    ``target_load`` = k / E (the share of tokens each expert should keep under even routing with k
    kept experts per head). Raising a starved expert and lowering a crowded one toward a fixed
    target balances the load *and* holds the number of kept experts per head near k under the
    threshold rule.

    ``target="mean"``: bias += rate * sign(mean load - load), then each head's biases are re-centred
    to mean 0. Uncentred, these updates drift upward under the threshold rule (a shift common to all
    of a head's experts changes how many pass the fixed sigma: a 20M-token run drifted from ~3 to ~23
    kept experts per head and token); centred, they cut the kept count instead and leave many pairs
    dead (README, routing recipes). For top-k and top-1 a common shift changes nothing and the two
    targets agree, since there the mean load is k / E."""
    if target not in BALANCE_TARGETS:
        raise ValueError(f"balance target {target!r}: expected one of {BALANCE_TARGETS}")
    load = load.to(bias.device)
    with torch.no_grad():
        if target == "absolute":
            if target_load is None or not 0.0 < target_load <= 1.0:
                raise ValueError(f"absolute balance target needs a target load in (0, 1], got {target_load!r}")
            bias.add_(rate * torch.sign(target_load - load))
        else:
            bias.add_(rate * torch.sign(load.mean(-1, keepdim=True) - load))
            bias.sub_(bias.mean(-1, keepdim=True))
