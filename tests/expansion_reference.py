"""Explicit E^2 expansion of a MONET MoE layer: the slow, obviously-correct reference for tests.

Only for tests at small sizes: it forms every expert's output E_ij(x) ([T, E, E, d]) and every
expert weight ([T, E, E] or [T, H, E, E]).

    naive_moe_output(moe, x, g_row, g_col, weights=None)
        = sum_(h,i,j) g_row[h,i] g_col[h,j] E_ij(x)            (weights=None)
        = sum_(i,j) weights[t,i,j] E_ij(x)                     (weights [*tokens, E, E])
        = sum_(h,i,j) weights[t,h,i,j] E_ij(x)                 (weights [*tokens, H, E, E])

    HD: E_ij(x) = V_j relu2(U_i x + c_i) + b_j
    VD: E_ij(x) = [V11_i a_i + V12_i a'_j + b1_i ; V21_j a_i + V22_j a'_j + b2_j]

``edited_weights`` applies ExpertEdits to explicit weights following the documented semantics
(written independently of monet_interp.editing's compiler), and ``naive_moes`` swaps every MoE of
a HookedMONET for the naive formula (routing hooks still run) so whole-model logits can be compared.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


def _relu2(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x).square()


def expert_weights(g_row: torch.Tensor, g_col: torch.Tensor, per_head: bool = False) -> torch.Tensor:
    """[*tokens, E, E] summed over heads, or [*tokens, H, E, E] with per_head=True."""
    w = g_row[..., :, :, None] * g_col[..., :, None, :]
    return w if per_head else w.sum(-3)


def expert_outputs(moe, x: torch.Tensor) -> torch.Tensor:
    """E_ij(x_t) for every expert: [T, E, E, d] for x [T, d], straight from the module's weights."""
    e = moe.n_experts
    if moe.decompose == "horizontal":
        m = moe.moe_dim
        a = _relu2(x @ moe.u.weight.T + moe.u.bias).view(-1, e, m)  # a_i
        v = moe.v.weight.view(-1, e, m)  # [d, E(j), m]
        return torch.einsum("tim,djm->tijd", a, v) + moe.b[None, None, :, :]
    half = moe.moe_dim // 2
    a = _relu2(x @ moe.u1.weight.T + moe.u1.bias).view(-1, e, half)  # a_i
    a2 = _relu2(x @ moe.u2.weight.T + moe.u2.bias).view(-1, e, half)  # a'_j
    v11, v12, v21, v22 = (getattr(moe, name).weight.view(-1, e, half) for name in ("v11", "v12", "v21", "v22"))
    n_tok = x.shape[0]
    top = (torch.einsum("tim,dim->tid", a, v11)[:, :, None, :]       # V11_i a_i
           + torch.einsum("tjm,dim->tijd", a2, v12)                  # V12_i a'_j
           + moe.b1[None, :, None, :])                               # b1_i
    bottom = (torch.einsum("tim,djm->tijd", a, v21)                  # V21_j a_i
              + torch.einsum("tjm,djm->tjd", a2, v22)[:, None, :, :]  # V22_j a'_j
              + moe.b2[None, None, :, :])                            # b2_j
    return torch.cat([top.expand(n_tok, e, e, -1), bottom.expand(n_tok, e, e, -1)], dim=-1)


def naive_moe_output(moe, x: torch.Tensor, g_row: torch.Tensor, g_col: torch.Tensor,
                     weights: torch.Tensor | None = None) -> torch.Tensor:
    """The MoE output by explicit expansion: sum over (h,) i, j of weight * E_ij(x). x [*tokens, d]."""
    lead, d, e, h = x.shape[:-1], x.shape[-1], moe.n_experts, moe.n_heads
    x2 = x.reshape(-1, d)
    if weights is None:
        w = expert_weights(g_row, g_col).reshape(-1, e, e)
    elif weights.dim() == len(lead) + 2:
        w = weights.reshape(-1, e, e)
    elif weights.dim() == len(lead) + 3:
        w = weights.reshape(-1, h, e, e).sum(1)
    else:
        raise ValueError(f"weights must be [*tokens, E, E] or [*tokens, H, E, E], got {tuple(weights.shape)}")
    out = torch.einsum("tij,tijd->td", w.to(x.dtype), expert_outputs(moe, x2))
    return out.reshape(*lead, d)


def edit_applies(edit, layer: int, cfg) -> bool:
    if edit.layer is not None:
        return edit.layer == layer
    return edit.group == "all" or edit.group == layer // cfg.moe_groups


def edited_weights(edits, layer: int, cfg, g_row: torch.Tensor, g_col: torch.Tensor) -> torch.Tensor:
    """The edited summed weights [*tokens, E, E] of ``layer``, from the edits' documented semantics:
    per-head edits change g_row[h,i] g_col[h,j] of their heads, all-heads edits the head sum."""
    per_head = expert_weights(g_row, g_col, per_head=True).clone()  # [*tokens, H, E, E]

    def op(edit, w):
        return {"prune": lambda: torch.zeros_like(w), "scale": lambda: edit.value * w,
                "set": lambda: torch.full_like(w, edit.value), "add": lambda: w + edit.value}[edit.op]()

    active = [e for e in edits if edit_applies(e, layer, cfg)]
    for edit in active:
        if edit.heads is not None:
            for h in edit.heads:
                per_head[..., h, edit.i, edit.j] = op(edit, per_head[..., h, edit.i, edit.j])
    summed = per_head.sum(-3)
    for edit in active:
        if edit.heads is None:
            summed[..., edit.i, edit.j] = op(edit, summed[..., edit.i, edit.j])
    return summed


@contextmanager
def naive_moes(model, weights_fn: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor | None] | None = None
               ) -> Iterator[None]:
    """Replace every MoE forward of ``model`` by naive_moe_output; weights_fn(layer, g_row, g_col)
    gives the weights override (None: the stock g_row * g_col). Routing hooks still apply."""
    patched = []
    try:
        for layer, block in enumerate(model.blocks):
            moe = block.moe

            def forward(x, g_row, g_col, moe=moe, layer=layer):
                g_row = moe.hook_g_row(g_row).to(x.dtype)
                g_col = moe.hook_g_col(g_col).to(x.dtype)
                weights = weights_fn(layer, g_row, g_col) if weights_fn is not None else None
                return naive_moe_output(moe, x, g_row, g_col, weights)

            moe.forward = forward
            patched.append(moe)
        yield
    finally:
        for moe in patched:
            del moe.forward
