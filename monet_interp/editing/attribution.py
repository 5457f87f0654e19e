"""Attribution of a metric to every expert at once: dL/dS for a per-expert scale S.

Scaling expert (i, j) of routing group g by S[i, j] (on every layer of the group, since the group
shares its routing) multiplies its weight A[t,i,j] = sum_h g_row[t,h,i] g_col[t,h,j]. At S = 1,

    dL/dS[i,j] = sum_(layers of g) sum_t A[t,i,j] dL/dA[t,i,j]
               = sum_(layers) sum_(t,h,c) P[t,h,i,c] R[t,h,j,c]      (one GEMM per layer)

with the per-layer gradients of the mix outputs (captured on the ``expert_edit`` seam):

HD   P = g_row[t,h,i] * [x[t,i,:], 1]           R = g_col[t,h,j] * [dL/dz[t,j,:], dL/dc[t,j]]
VD   P = g_row[t,h,i] * [rho[t,i], 1, dL/dz12[t,i,:], x_row[t,i,:]]
     R = g_col[t,h,j] * [1, gamma[t,j], x_col[t,j,:], dL/dz21[t,j,:]]
     rho = dL/dr + <dL/dz11, x_row> (z11 = r * x_row),  gamma = dL/dc + <dL/dz22, x_col>

(VD: A enters r, c, z12 = A x_col and z21 = A^T x_row.) Per head (``per_head=True``) the sum
over h is left out, giving the derivative for a per-head scale S[h, i, j].

Two equivalent ways to contract, picked per layer: "gemm" (the P^T R GEMM, cost
T*H*E^2*C) and "sparse" (only the (i, j) pairs routed on each token and head, listed exactly
by engine.RoutingLists, cost T*H*k1*k2*C, accumulated with index_add). Nothing of size
[T, E, E] is formed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from monet_interp.components.moe import mix_hd as stock_mix_hd
from monet_interp.components.moe import mix_vd as stock_mix_vd
from monet_interp.editing.engine import CHUNK_ELEMENTS, RoutingLists, _max_active
from monet_interp.editing.spec import EditError

METHODS = ("auto", "gemm", "sparse")


class _Probe:
    """A seam object: the stock mix, with zero leaves added to its outputs to read their gradients."""

    def __init__(self) -> None:
        self.records: list[tuple[str, tuple[Tensor, ...], Tensor, Tensor, list[Tensor]]] = []

    def _leaves(self, outputs: tuple[Tensor, ...]) -> tuple[list[Tensor], tuple[Tensor, ...]]:
        leaves = [torch.zeros_like(t, requires_grad=True) for t in outputs]
        return leaves, tuple(t + leaf for t, leaf in zip(outputs, leaves))

    def mix_hd(self, acts: Tensor, g_row: Tensor, g_col: Tensor) -> tuple[Tensor, Tensor]:
        leaves, out = self._leaves(stock_mix_hd(acts, g_row, g_col))
        self.records.append(("hd", (acts.detach(),), g_row.detach(), g_col.detach(), leaves))
        return out

    def mix_vd(self, acts_row: Tensor, acts_col: Tensor, g_row: Tensor, g_col: Tensor) -> tuple[Tensor, ...]:
        leaves, out = self._leaves(stock_mix_vd(acts_row, acts_col, g_row, g_col))
        self.records.append(("vd", (acts_row.detach(), acts_col.detach()), g_row.detach(), g_col.detach(), leaves))
        return out


def _factors(kind: str, xs: tuple[Tensor, ...], grads: list[Tensor], dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """X[t,i,c] and Y[t,j,c] with dL/dA[t,i,j] = sum_c X[t,i,c] Y[t,j,c] (tokens flattened)."""
    if kind == "hd":
        (x,) = xs
        e = x.shape[-2]
        x = x.reshape(-1, e, x.shape[-1]).to(dtype)
        gz, gc = (g.reshape(x.shape[0], e, -1).to(dtype) for g in grads)
        ones = torch.ones_like(gc)
        return torch.cat([x, ones], -1), torch.cat([gz, gc], -1)
    x_row, x_col = xs
    e, half = x_row.shape[-2], x_row.shape[-1]
    x_row = x_row.reshape(-1, e, half).to(dtype)
    x_col = x_col.reshape(-1, e, half).to(dtype)
    n = x_row.shape[0]
    gz11, gz12, gr, gz21, gz22, gc = (g.reshape(n, e, -1).to(dtype) for g in grads)
    rho = gr + (gz11 * x_row).sum(-1, keepdim=True)
    gamma = gc + (gz22 * x_col).sum(-1, keepdim=True)
    ones = torch.ones_like(rho)
    return torch.cat([rho, ones, gz12, x_row], -1), torch.cat([ones, gamma, x_col, gz21], -1)


def _contract(g1: Tensor, g2: Tensor, X: Tensor, Y: Tensor, per_head: bool, method: str) -> Tensor:
    """sum_(t,h,c) g1[t,h,i] X[t,i,c] g2[t,h,j] Y[t,j,c] -> [E, E] (or [H, E, E] per head)."""
    n_tok, n_heads, n_exp = g1.shape
    chans = X.shape[-1]
    out = X.new_zeros(n_heads, n_exp, n_exp) if per_head else X.new_zeros(n_exp, n_exp)
    if method == "auto":
        k1, k2 = _max_active(g1), _max_active(g2)
        method = "sparse" if 4 * k1 * k2 < n_exp * n_exp else "gemm"
    if method == "gemm":
        step = max(1, CHUNK_ELEMENTS // (2 * n_heads * n_exp * chans))
        for s in range(0, n_tok, step):
            P = g1[s:s + step, :, :, None] * X[s:s + step, None]  # [t, H, E(i), C]
            R = g2[s:s + step, :, :, None] * Y[s:s + step, None]  # [t, H, E(j), C]
            out += torch.einsum("thic,thjc->hij" if per_head else "thic,thjc->ij", P, R)
        return out
    flat = out.view(-1)
    for row, i, j in RoutingLists(g1, g2).pairs(max(1, CHUNK_ELEMENTS // chans)):
        t, h = row // n_heads, row % n_heads
        vals = g1[t, h, i] * g2[t, h, j] * (X[t, i] * Y[t, j]).sum(-1)
        index = i * n_exp + j
        if per_head:
            index = index + h * (n_exp * n_exp)
        flat.index_add_(0, index, vals)
    return out


def expert_attribution(model: Any, tokens: Any, metric_fn: Callable[[Tensor], Tensor] | None = None,
                       groups: list[int] | None = None, per_head: bool = False, method: str = "auto",
                       **forward_kwargs: Any) -> Tensor:
    """dMetric/dS for every expert of every requested routing group, in one backward pass.

    metric_fn(logits) -> scalar; default: mean next-token loss of ``tokens``. groups: routing
    groups (default all), in the order of the result's first axis. Returns [n_groups, E, E]
    (float32, or float64 for a float64 model), or [n_groups, H, E, E] with per_head=True.
    A positive entry means scaling the expert up increases the metric; pruning it (S: 1 -> 0)
    changes the metric by about -dMetric/dS[i, j] (first order). method: "auto", "gemm" or
    "sparse" (see the module docstring; all exact).
    """
    if method not in METHODS:
        raise EditError(f"method must be one of {METHODS}, got {method!r}")
    cfg = model.cfg
    groups = list(range(cfg.num_routers)) if groups is None else [int(g) for g in groups]
    for g in groups:
        if not 0 <= g < cfg.num_routers:
            raise EditError(f"routing group {g} does not exist (the model has {cfg.num_routers} groups)")
    if len(set(groups)) != len(groups):
        raise EditError(f"groups lists a group twice: {groups}")
    layers = {layer: g for g in groups for layer in cfg.layers_of_group(g)}
    busy = [layer for layer in layers if model.blocks[layer].moe.expert_edit is not None]
    if busy:
        raise EditError(f"layers {busy} have expert edits attached; expert_attribution measures the unedited "
                        f"model (run it outside edit_experts)")
    probes = {layer: _Probe() for layer in layers}
    try:
        for layer, probe in probes.items():
            model.blocks[layer].moe.expert_edit = probe
        with torch.enable_grad():
            if metric_fn is None:
                metric = model(tokens, return_type="loss", **forward_kwargs)
            else:
                metric = metric_fn(model(tokens, **forward_kwargs))
            if not isinstance(metric, Tensor) or metric.numel() != 1:
                raise EditError("metric_fn must return a scalar tensor")
            leaves = [leaf for probe in probes.values() for record in probe.records for leaf in record[4]]
            grads = torch.autograd.grad(metric.reshape(()), leaves, allow_unused=True)
    finally:
        for layer, probe in probes.items():
            if model.blocks[layer].moe.expert_edit is probe:
                model.blocks[layer].moe.expert_edit = None
    dtype = torch.float64 if model.dtype == torch.float64 else torch.float32
    n_exp, n_heads = cfg.moe_experts, cfg.moe_heads
    shape = (len(groups), n_heads, n_exp, n_exp) if per_head else (len(groups), n_exp, n_exp)
    result = torch.zeros(shape, dtype=dtype, device=model.device)
    position = 0
    for layer, probe in probes.items():
        slot = groups.index(layers[layer])
        for kind, xs, g_row, g_col, leaves in probe.records:
            layer_grads = [torch.zeros_like(leaf) if g is None else g
                           for leaf, g in zip(leaves, grads[position:position + len(leaves)])]
            position += len(leaves)
            X, Y = _factors(kind, xs, layer_grads, dtype)
            g1 = g_row.reshape(-1, n_heads, n_exp).to(dtype)
            g2 = g_col.reshape(-1, n_heads, n_exp).to(dtype)
            result[slot] += _contract(g1, g2, X, Y, per_head, method)
    return result
