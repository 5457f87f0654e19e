"""MONET's mixture of E^2 experts (horizontal HD and vertical VD decompositions).

Expert (i, j) of a layer combines bottom half i and top half j; its weight on a token is
g[h,i,j] = g_row[h,i] * g_col[h,j] per routing head h, summed over heads. The layer output is
sum_h sum_i sum_j g_row[h,i] g_col[h,j] E_ij(x), computed here without ever forming the E^2
weights (see ``mix_hd`` / ``mix_vd``). Unlike the released code, the bias terms are the exact
sums (no sum_i g_row = 1 shortcut), so editing the factors edits experts exactly.

HD: E_ij(x) = V_j relu2(U_i x + c_i) + b_j.
VD: E_ij(x) = [V11_i a_i + V12_i a'_j + b1_i ; V21_j a_i + V22_j a'_j + b2_j],
    a_i = relu2(U1_i x + c1_i), a'_j = relu2(U2_j x + c2_j).

Expert edits (prune, scale, set, add) plug in through ``expert_edit``: an object whose
``mix_hd``/``mix_vd`` methods replace the unedited mixes below (see monet_interp.editing).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import nn

from monet_interp.components.hooks import hook_point
from monet_interp.components.router import MonetRouter, RoutingFactors


def relu2(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x).square()


def mix_hd(
    x: Float[torch.Tensor, "*tokens expert m"],
    g_row: Float[torch.Tensor, "*tokens head expert"],
    g_col: Float[torch.Tensor, "*tokens head expert"],
) -> tuple[Float[torch.Tensor, "*tokens expert m"], Float[torch.Tensor, "*tokens expert"]]:
    """z[j] = sum_h g_col[h,j] sum_i g_row[h,i] x[i];  c[j] = sum_h g_col[h,j] sum_i g_row[h,i]."""
    per_head = torch.einsum("...hi,...im->...hm", g_row, x)
    z = torch.einsum("...hj,...hm->...jm", g_col, per_head)
    c = torch.einsum("...hj,...h->...j", g_col, g_row.sum(-1))
    return z, c


def mix_vd(
    x_row: Float[torch.Tensor, "*tokens expert half_m"],
    x_col: Float[torch.Tensor, "*tokens expert half_m"],
    g_row: Float[torch.Tensor, "*tokens head expert"],
    g_col: Float[torch.Tensor, "*tokens head expert"],
) -> tuple[torch.Tensor, ...]:
    """The six VD contractions: (z11, z12, r, z21, z22, c).

    r[i] = sum_j A[i,j], c[j] = sum_i A[i,j] with A[i,j] = sum_h g_row[h,i] g_col[h,j];
    z11[i] = r[i] x_row[i], z12[i] = sum_j A[i,j] x_col[j], z21[j] = sum_i A[i,j] x_row[i],
    z22[j] = c[j] x_col[j].
    """
    z12, r = mix_hd(x_col, g_col, g_row)  # contract over j toward rows i
    z21, c = mix_hd(x_row, g_row, g_col)  # contract over i toward columns j
    return r[..., None] * x_row, z12, r, z21, c[..., None] * x_col, c


class MonetMoE(nn.Module):
    def __init__(self, d_model: int, n_experts: int, moe_dim: int, n_heads: int, decompose: str,
                 router: MonetRouter | None = None):
        super().__init__()
        self.d_model, self.n_experts, self.moe_dim, self.n_heads = d_model, n_experts, moe_dim, n_heads
        self.decompose = decompose
        if decompose == "horizontal":
            self.u = nn.Linear(d_model, n_experts * moe_dim)
            self.v = nn.Linear(n_experts * moe_dim, d_model, bias=False)
            self.b = nn.Parameter(torch.zeros(n_experts, d_model))
            self.hook_expert_acts = hook_point()  # [batch, pos, expert, moe_dim]
        else:
            half_flat, half_d = n_experts * moe_dim // 2, d_model // 2
            self.u1 = nn.Linear(d_model, half_flat)
            self.u2 = nn.Linear(d_model, half_flat)
            self.v11 = nn.Linear(half_flat, half_d, bias=False)
            self.v12 = nn.Linear(half_flat, half_d, bias=False)
            self.v21 = nn.Linear(half_flat, half_d, bias=False)
            self.v22 = nn.Linear(half_flat, half_d, bias=False)
            self.b1 = nn.Parameter(torch.zeros(n_experts, half_d))
            self.b2 = nn.Parameter(torch.zeros(n_experts, half_d))
            self.hook_expert_acts_row = hook_point()  # [batch, pos, expert, moe_dim/2] (a_i)
            self.hook_expert_acts_col = hook_point()  # [batch, pos, expert, moe_dim/2] (a'_j)
        self.router = router  # only on the first layer of each routing group
        if router is not None:
            self.hook_router_logits_row = hook_point()  # [batch, pos, head, expert] raw logits of g1
            self.hook_router_logits_col = hook_point()  # [batch, pos, head, expert] raw logits of g2
        self.hook_g_row = hook_point()  # [batch, pos, head, expert] g1 used by this layer
        self.hook_g_col = hook_point()  # [batch, pos, head, expert] g2 used by this layer
        self.expert_edit = None  # an editing plan with mix_hd / mix_vd, or None

    def route(self, x: Float[torch.Tensor, "batch pos d_model"]) -> RoutingFactors:
        """Run this layer's router (router layers only), with the logit hooks."""
        assert self.router is not None, "route() is only defined on router layers"
        logits_row, logits_col = self.router.logits(x)
        return self.router.route_from_logits(self.hook_router_logits_row(logits_row),
                                             self.hook_router_logits_col(logits_col))

    def forward(
        self,
        x: Float[torch.Tensor, "batch pos d_model"],
        g_row: Float[torch.Tensor, "batch pos head expert"],
        g_col: Float[torch.Tensor, "batch pos head expert"],
    ) -> Float[torch.Tensor, "batch pos d_model"]:
        g_row = self.hook_g_row(g_row).to(x.dtype)
        g_col = self.hook_g_col(g_col).to(x.dtype)
        edit = self.expert_edit
        if self.decompose == "horizontal":
            acts = self.hook_expert_acts(relu2(self.u(x)).unflatten(-1, (self.n_experts, self.moe_dim)))
            z, c = mix_hd(acts, g_row, g_col) if edit is None else edit.mix_hd(acts, g_row, g_col)
            return self.v(z.flatten(-2)) + c @ self.b
        shape = (self.n_experts, self.moe_dim // 2)
        acts_row = self.hook_expert_acts_row(relu2(self.u1(x)).unflatten(-1, shape))
        acts_col = self.hook_expert_acts_col(relu2(self.u2(x)).unflatten(-1, shape))
        mixed = mix_vd(acts_row, acts_col, g_row, g_col) if edit is None else edit.mix_vd(
            acts_row, acts_col, g_row, g_col)
        z11, z12, r, z21, z22, c = mixed
        top = self.v11(z11.flatten(-2)) + self.v12(z12.flatten(-2)) + r @ self.b1
        bottom = self.v21(z21.flatten(-2)) + self.v22(z22.flatten(-2)) + c @ self.b2
        return torch.cat([top, bottom], dim=-1)
