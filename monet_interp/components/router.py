"""The MONET router: two logit maps per head and the rule that turns them into routing factors.

Released rule ("threshold"): per head, logits are normalised by a BatchNorm over all tokens and
experts of that head (running statistics at inference); an expert is kept when its normalised
logit is >= min(max normalised logit, sigma) with sigma = Phi^-1(1 - topk / E), so at least the
argmax survives; the factor is the softmax of the *raw* float32 logits over the kept experts.

Other rules (``MonetConfig.moe_routing``):
- "topk": exactly ``topk`` experts per head by raw logit, softmax over the kept ones.
- "top1": every head keeps exactly one i and one j. The gate value is the full softmax
  probability of the chosen expert (as in Switch Transformers), so the router receives gradient
  through the chosen expert's probability, and the auxiliary losses see the full distribution.
  Replacing the expert a head chose (steering) is then a single-index change.

Batch statistics are used only when ``use_batch_stats`` is set explicitly (training);
``module.train()`` alone never changes routing or the running statistics.

Selection bias (``MonetConfig.moe_selection_bias``, not in released checkpoints): buffers
``selection_bias1/2`` [head, expert] added to the score that *selects* experts (the normalised
logit for "threshold", the raw logit for "topk"/"top1") but never to the values of g, which stay
the softmax of the raw logits. The trainer nudges them toward uniform expert load after each
step (loss-free balancing); at inference they are fixed, so routing stays a pure function of x.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import nn


class RoutingFactors(NamedTuple):
    g_row: torch.Tensor  # g1 [batch, pos, head, expert]: factor of bottom/left half i
    g_col: torch.Tensor  # g2 [batch, pos, head, expert]: factor of top/right half j
    logits_row: torch.Tensor | None = None  # raw logits [batch, pos, head, expert] (router layers)
    logits_col: torch.Tensor | None = None
    probs_row: torch.Tensor | None = None  # full softmax (top1 routing only; for aux losses)
    probs_col: torch.Tensor | None = None


def threshold_sigma(topk: int, n_experts: int) -> float:
    """sigma = Phi^-1(1 - topk / E): the normalised-logit threshold of the released router."""
    return NormalDist().inv_cdf(1.0 - topk / n_experts)


class MonetRouter(nn.Module):
    def __init__(self, d_model: int, n_heads: int, n_experts: int, topk: int, routing: str = "threshold",
                 selection_bias: bool = False):
        super().__init__()
        self.n_heads, self.n_experts, self.topk, self.routing = n_heads, n_experts, topk, routing
        self.w1 = nn.Linear(d_model, n_heads * n_experts, bias=False)
        self.w2 = nn.Linear(d_model, n_heads * n_experts, bias=False)
        # Held only for their buffers (running_mean/var, num_batches_tracked; HF key names); the
        # normalisation itself is applied functionally so that .train() cannot switch it.
        self.norm1 = nn.BatchNorm1d(n_heads, affine=False)
        self.norm2 = nn.BatchNorm1d(n_heads, affine=False)
        self.use_batch_stats = False
        self.sigma = threshold_sigma(topk, n_experts) if routing == "threshold" and topk < n_experts else None
        # Training only: the threshold sigma is multiplied by this (1 = the released rule; < 1 keeps more
        # experts, used by the trainer's routing warmup). Never saved.
        self.threshold_scale = 1.0
        if selection_bias:
            self.register_buffer("selection_bias1", torch.zeros(n_heads, n_experts))
            self.register_buffer("selection_bias2", torch.zeros(n_heads, n_experts))
        else:
            self.selection_bias1 = self.selection_bias2 = None

    def logits(self, x: Float[torch.Tensor, "batch pos d_model"]) -> tuple[
        Float[torch.Tensor, "batch pos head expert"], Float[torch.Tensor, "batch pos head expert"]
    ]:
        shape = (*x.shape[:-1], self.n_heads, self.n_experts)
        dtype = torch.promote_types(x.dtype, torch.float32)  # at least float32, as released
        return self.w1(x).view(shape).to(dtype), self.w2(x).view(shape).to(dtype)

    def _normalise(self, logits: torch.Tensor, norm: nn.BatchNorm1d) -> torch.Tensor:
        flat = logits.transpose(-1, -2).reshape(-1, self.n_heads)  # [tokens * experts, head]
        mean, var = norm.running_mean, norm.running_var
        if mean.dtype != flat.dtype:  # e.g. a bf16 or float64 model: routing math stays in the logits' dtype
            mean, var = mean.to(flat.dtype), var.to(flat.dtype)
        if self.use_batch_stats:
            norm.num_batches_tracked.add_(1)
        out = nn.functional.batch_norm(flat, mean, var, training=self.use_batch_stats, momentum=norm.momentum,
                                       eps=norm.eps)
        if self.use_batch_stats and mean is not norm.running_mean:  # write the updated statistics back
            norm.running_mean.copy_(mean)
            norm.running_var.copy_(var)
        return out.view(*logits.shape[:-2], self.n_experts, self.n_heads).transpose(-1, -2)

    def gate(self, logits: Float[torch.Tensor, "batch pos head expert"], norm: nn.BatchNorm1d,
             bias: Float[torch.Tensor, "head expert"] | None = None) -> tuple[
        Float[torch.Tensor, "batch pos head expert"], Float[torch.Tensor, "batch pos head expert"] | None
    ]:
        """Routing factors (and, for top1, the full softmax) from raw logits; ``bias`` shifts selection only."""
        if self.routing == "threshold":
            normed = self._normalise(logits, norm)
            if bias is not None:
                normed = normed + bias.to(normed.dtype)
            bar = normed.amax(-1, keepdim=True).clamp_max(self.sigma * self.threshold_scale)
            return torch.softmax(logits.masked_fill(normed < bar, float("-inf")), dim=-1), None
        score = logits if bias is None else logits + bias.to(logits.dtype)
        if self.routing == "topk":
            kth = score.topk(self.topk, dim=-1).values[..., -1:]
            return torch.softmax(logits.masked_fill(score < kth, float("-inf")), dim=-1), None
        probs = torch.softmax(logits, dim=-1)
        choice = score.argmax(-1, keepdim=True)
        gates = torch.zeros_like(probs).scatter(-1, choice, probs.gather(-1, choice))
        return gates, probs

    def selection_affine(self, side: str) -> tuple[
        Float[torch.Tensor, "head 1"], Float[torch.Tensor, "head 1"], Float[torch.Tensor, "head expert"]
    ]:
        """(scale, center, bias) with selection score = scale * (raw logit - center) + bias, per side.

        side "row" (g1: norm1, selection_bias1) or "col" (g2). "threshold": the BatchNorm with
        running statistics (scale = 1/sqrt(running_var + eps), center = running_mean, per head);
        "topk"/"top1": the raw logit (scale 1, center 0). bias: the selection bias (zeros without
        one). The values of g never see it: they stay the softmax of the raw logits."""
        if side not in ("row", "col"):
            raise ValueError(f"side must be 'row' or 'col', got {side!r}")
        norm, bias = (self.norm1, self.selection_bias1) if side == "row" else (self.norm2, self.selection_bias2)
        if bias is None:
            bias = torch.zeros(self.n_heads, self.n_experts, device=norm.running_mean.device)
        if self.routing == "threshold":
            return torch.rsqrt(norm.running_var + norm.eps)[:, None], norm.running_mean[:, None], bias
        flat = torch.zeros(self.n_heads, 1, device=bias.device)
        return flat + 1, flat, bias

    @property
    def selection_floor(self) -> float | None:
        """The score below which an expert is dropped whatever the others score ("threshold":
        sigma * threshold_scale; None for "topk"/"top1", which rank instead)."""
        if self.sigma is not None:  # set for threshold routing only
            return self.sigma * self.threshold_scale
        return None

    def forward(self, x: Float[torch.Tensor, "batch pos d_model"]) -> RoutingFactors:
        logits_row, logits_col = self.logits(x)
        return self.route_from_logits(logits_row, logits_col)

    def route_from_logits(self, logits_row: torch.Tensor, logits_col: torch.Tensor) -> RoutingFactors:
        g_row, probs_row = self.gate(logits_row, self.norm1, self.selection_bias1)
        g_col, probs_col = self.gate(logits_col, self.norm2, self.selection_bias2)
        return RoutingFactors(g_row, g_col, logits_row, logits_col, probs_row, probs_col)
