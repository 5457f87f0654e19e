"""Apply compiled expert edits inside the MoE mix, without expanding g to E^2 experts.

``LayerEdit`` is the object ``MonetMoE.expert_edit`` holds while edits are active; its
``mix_hd`` / ``mix_vd`` replace the stock mixes of monet_interp.components.moe. Every path is
exact (up to float rounding) and autograd-capable in torch; none materialises [T, E, E].

With A[t,i,j] = sum_h g_row[t,h,i] g_col[t,h,j] and delta = A' - A the weight change of the
edited experts (plan.py), the edited mix is the stock mix plus a correction:

    HD / VD bottom ("to_cols"):  z[t,j] += sum_i delta[t,i,j] x[t,i],   c[t,j] += sum_i delta[t,i,j]
    VD top         ("to_rows"):  z12[t,i] += sum_j delta[t,i,j] x_col[t,j],  r[t,i] += sum_j delta
    VD:  z11 = r * x_row and z22 = c * x_col are recomputed from the corrected r and c.

Three ways to compute it (``path``), all exact:

``"list"``    correction list, ~K * (H + m) per token for K edits: delta[t,k] from
              g_row[t,:,i_k], g_col[t,:,j_k], then index_add of delta * x[t,i_k] (chunked over K).
``"sparse"``  mask-GEMM restricted to the routed pairs: list every (t, h, i, j) with
              g_row[t,h,i] != 0 and g_col[t,h,j] != 0 (~H * k1 * k2 per token, k ~ 8 kept per
              factor), look up each pair's edit coefficient in a dense [E,E] (or [H,E,E]) table,
              keep the edited ones and scatter their delta * x; cost independent of the number
              of edits. Gradients are exact except d/dg at entries where g is exactly 0 (they
              get 0); "auto" therefore avoids it when autograd needs gradients of g.
``"dense"``   mask-GEMM: z[t,j] = sum_h g_col[t,h,j] ((g_row[t,h,:] * [x[t], 1]) @ S)[j] with the
              multiplier S = 1 + coef ([E,E], or [H,E,E] for per-head edits); ~H * E^2 * m per
              token (GEMM), for dense routing.
The constant part of set/add edits (the value switched on where the router gave nothing) is
always added from the list (cost ~ #set/add edits * m per token).

``path="auto"`` (the default), per layer and call, with K_lin the weight-proportional edits:

    K_lin <= 64                              -> "list" (g is not inspected: no device sync)
    else the smallest of the estimated costs per token
      list   K * (H + m + 2)
      sparse 4 * H * E + 10 * P / T                 (P routed pairs in the batch; skipped if
                                                   autograd needs d/dg)
      dense  H * E^2 * (m + 1) / 16                (GEMM throughput credit)

At the released sizes (E=512, ~8 experts kept per head and factor) "sparse" wins above ~800
edits, and a 20,000-expert mask costs about as much as a 1,000-expert one (benchmarks/
bench_editing_cpu.py: +4-7% of the layer's CPU time at T=256 for 5,243 or 20,000 pruned experts).

Under autograd, when the routing factors require grad (the router's weights do by default),
"auto" avoids "sparse" to keep d/dg exact, so large masks fall back to "list"/"dense" and are
slower; run inside torch.no_grad() (``generate`` does) or pass path="sparse" when d/dg at
unrouted entries is not needed (gradients w.r.t. weights and activations stay exact).

Backends: ``"torch"``, ``"triton"`` (the kernels of monet_interp.kernels: correction list and
mask-GEMM; forward only) and ``"auto"`` (Triton when every tensor is on CUDA, the kernels
import, and no gradient is needed; torch otherwise). The sparse path and the constant part
always run in torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from monet_interp.components.moe import mix_hd as stock_mix_hd
from monet_interp.editing.plan import LayerPlan
from monet_interp.editing.spec import EditError

EditPath = Literal["auto", "list", "sparse", "dense"]
Backend = Literal["auto", "torch", "triton"]
PATHS = ("auto", "list", "sparse", "dense")
BACKENDS = ("auto", "torch", "triton")

LIST_ALWAYS_UP_TO = 64  # edits; below this "auto" takes the list without looking at g
DENSE_GEMM_CREDIT = 16.0  # how much cheaper a GEMM flop is than a gather/scatter one (CPU and GPU, rough)
CHUNK_ELEMENTS = 1 << 22  # largest intermediate (elements) the torch paths build at once


# ---------------------------------------------------------------------------- backends
def _kernels() -> Any | None:
    try:
        import monet_interp.kernels as kernels
    except Exception:  # pragma: no cover - kernels are part of the package
        return None
    needed = ("build_edit_csr", "edit_correction", "masked_mix")
    return kernels if all(hasattr(kernels, name) for name in needed) else None


def kernels_available() -> bool:
    """Whether the Triton backend (monet_interp.kernels) can be imported."""
    return _kernels() is not None


def resolve_backend(backend: str, tensors: tuple[Tensor, ...], needs_grad: bool) -> str:
    if backend not in BACKENDS:
        raise EditError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    kernels = _kernels()
    if backend == "triton":
        if kernels is None:
            raise EditError("backend='triton' needs monet_interp.kernels (correction list and mask-GEMM), "
                            "which could not be imported; use backend='torch'")
        if needs_grad:
            raise EditError("the Triton edit kernels are forward-only; under autograd use backend='torch' "
                            "or 'auto' (or run inside torch.no_grad())")
        return "triton"
    if kernels is not None and not needs_grad and all(t.is_cuda for t in tensors):
        return "triton"
    return "torch"


# ---------------------------------------------------------------------------- helpers
def _needs_grad(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _max_active(g: Tensor) -> int:
    """Largest number of non-zero factors of one (token, head) in the batch."""
    return int(torch.count_nonzero(g, dim=-1).max()) if g.numel() else 0


class RoutingLists:
    """The non-zeros of g_row and g_col listed per (token, head) row (row = t * H + h), sorted by
    row: what the sparse path and the sparse attribution join into routed (i, j) pairs."""

    def __init__(self, g1: Tensor, g2: Tensor) -> None:
        n_exp = g1.shape[-1]
        self.n_rows = g1.numel() // n_exp
        self.row1, self.i = g1.detach().reshape(self.n_rows, n_exp).nonzero().unbind(1)  # sorted by row
        self.row2, self.j = g2.detach().reshape(self.n_rows, n_exp).nonzero().unbind(1)
        count2 = torch.bincount(self.row2, minlength=self.n_rows)
        self.start2 = count2.cumsum(0) - count2  # first g2 entry of each row
        self.repeat = count2[self.row1]  # number of partners of each g1 entry
        self.n_pairs = int(self.repeat.sum())

    def pairs(self, max_pairs: int = CHUNK_ELEMENTS) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """(row, i, j) of every routed pair, in chunks of about max_pairs pairs."""
        if self.n_pairs == 0:
            return
        ends = self.repeat.cumsum(0)
        marks = torch.arange(max_pairs, self.n_pairs, max_pairs, device=ends.device) \
            if self.n_pairs > max_pairs else ends.new_zeros(0)
        bounds = torch.searchsorted(ends, marks, right=True).tolist()
        begin = 0
        for stop in [*bounds, self.row1.numel()]:
            if stop <= begin:
                stop = begin + 1
            if begin >= self.row1.numel():
                break
            row1, i, repeat = self.row1[begin:stop], self.i[begin:stop], self.repeat[begin:stop]
            first = torch.repeat_interleave(repeat)  # [P] index into this chunk of the g1 list
            row = row1[first]
            offset = torch.arange(first.numel(), device=first.device) - (repeat.cumsum(0) - repeat)[first]
            yield row, i[first], self.j[self.start2[row] + offset]  # g2 entries of the same row
            begin = stop


def choose_path(plan: LayerPlan, g_row: Tensor, g_col: Tensor, m: int, path: str = "auto",
                grad_of_g: bool = False) -> tuple[str, RoutingLists | None]:
    """The path for one call (see the module docstring), with the routing lists when built."""
    if path not in PATHS:
        raise EditError(f"path must be one of {PATHS}, got {path!r}")
    if path != "auto":
        return path, None
    n_lin, n_all = plan.n_linear, plan.n_edits
    h, e = plan.n_heads, plan.n_experts
    if n_lin <= LIST_ALWAYS_UP_TO:
        return "list", None
    const = plan.n_const * (m + 1)
    costs = {"list": n_all * (h + m + 2), "dense": h * e * e * (m + 1) / DENSE_GEMM_CREDIT + const}
    lists = None
    if not grad_of_g:
        lists = RoutingLists(g_row, g_col)
        costs["sparse"] = 4 * h * e + 10 * lists.n_pairs / max(1, g_row.shape[0]) + const
    best = min(costs, key=costs.__getitem__)
    return best, (lists if best == "sparse" else None)


def _chunks(total: int, per_item: int) -> list[tuple[int, int]]:
    step = max(1, CHUNK_ELEMENTS // max(1, per_item))
    return [(s, min(total, s + step)) for s in range(0, total, step)]


# ---------------------------------------------------------------------------- list path
Target = tuple[Tensor, Tensor, Tensor, str]  # (z, s, x_source, direction): z, s corrected in place


def _list_correct(g_row: Tensor, g_col: Tensor, rows: Tensor, cols: Tensor, coef: Tensor | None,
                  const: Tensor, targets: list[Target]) -> None:
    """delta[t,k] = sum_h coef[k,h] g_row[t,h,i_k] g_col[t,h,j_k] + const[k]; add it to every target.

    coef None: constant-only edits (delta = const on every token)."""
    n_tok, n_heads = g_row.shape[0], g_row.shape[1]
    m = max(z.shape[-1] for z, _, _, _ in targets)
    for start, stop in _chunks(rows.numel(), n_tok * (n_heads + m)):
        r, c = rows[start:stop], cols[start:stop]
        if coef is None:
            delta = const[start:stop].expand(n_tok, -1)
        else:
            w = g_row[:, :, r] * g_col[:, :, c]  # [T, H, k]
            delta = torch.einsum("thk,kh->tk", w, coef[start:stop]) + const[start:stop]
        for z, s, x, direction in targets:
            src, tgt = (r, c) if direction == "to_cols" else (c, r)
            z.index_add_(1, tgt, delta[:, :, None] * x[:, src, :])
            s.index_add_(1, tgt, delta)


# ---------------------------------------------------------------------------- sparse path
def _sparse_correct(g_row: Tensor, g_col: Tensor, table: Tensor, targets: list[Target],
                    lists: RoutingLists | None = None) -> None:
    """Correction from the routed (i, j) pairs whose table coefficient is non-zero.

    table: weight-proportional coefficient of every expert, [E, E] or [H, E, E] (0 = unedited).
    Pairs are enumerated exactly (RoutingLists), ~CHUNK_ELEMENTS at a time."""
    _, n_heads, n_exp = g_row.shape
    flat_table = table.reshape(-1)
    lists = lists if lists is not None else RoutingLists(g_row, g_col)
    for row, i, j in lists.pairs():
        key = i * n_exp + j
        if table.dim() == 3:
            key = key + (row % n_heads) * (n_exp * n_exp)
        coef = flat_table[key]
        hit = coef.nonzero().squeeze(1)  # routed pairs of edited experts
        row, i, j, coef = row[hit], i[hit], j[hit], coef[hit]
        t, h = row // n_heads, row % n_heads
        dw = coef * g_row[t, h, i] * g_col[t, h, j]  # weight change of each (t, h, i, j)
        for z, s, x, direction in targets:
            src, tgt = (i, j) if direction == "to_cols" else (j, i)
            z.index_put_((t, tgt), dw[:, None] * x[t, src], accumulate=True)
            s.index_put_((t, tgt), dw, accumulate=True)


# ---------------------------------------------------------------------------- dense path
def masked_mix_torch(x: Float[Tensor, "T E m"], g1: Float[Tensor, "T H E"], g2: Float[Tensor, "T H E"],
                     S: Tensor) -> tuple[Float[Tensor, "T E m"], Float[Tensor, "T E"]]:
    """Mask-GEMM: z[t,j] = sum_h g2[t,h,j] sum_i g1[t,h,i] S[(h),i,j] x[t,i]; c likewise with x = 1.

    S is [E, E] (all heads) or [H, E, E]. For the other contraction direction pass
    (x_col, g_col, g_row, S^T). Chunked over tokens; O(H * E * m) memory per token.
    """
    n_tok, n_exp, m = x.shape
    n_heads = g1.shape[1]
    ext = torch.cat([x, x.new_ones(n_tok, n_exp, 1)], dim=-1)  # ones channel -> c
    pieces = []
    for start, stop in _chunks(n_tok, 2 * n_heads * n_exp * (m + 1)):
        y = g1[start:stop, :, :, None] * ext[start:stop, None]  # [t, H, E(i), m+1]
        ys = torch.matmul(y.transpose(-1, -2), S if S.dim() == 2 else S[None])  # [t, H, m+1, E(j)]
        pieces.append(torch.einsum("thj,thcj->tjc", g2[start:stop], ys))
    out = torch.cat(pieces) if pieces else ext.new_zeros(0, n_exp, m + 1)
    return out[..., :m].contiguous(), out[..., m].contiguous()


# ---------------------------------------------------------------------------- the seam object
class LayerEdit:
    """Edits of one layer, plugged into ``MonetMoE.expert_edit``.

    ``last_path`` / ``last_backend`` record what the most recent call used (for inspection).
    """

    def __init__(self, plan: LayerPlan, backend: str = "auto", path: str = "auto") -> None:
        if backend not in BACKENDS:
            raise EditError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if path not in PATHS:
            raise EditError(f"path must be one of {PATHS}, got {path!r}")
        self.plan, self.backend, self.path = plan, backend, path
        self.last_path: str | None = None
        self.last_backend: str | None = None
        self._lists: RoutingLists | None = None

    def __repr__(self) -> str:
        return f"LayerEdit({self.plan!r}, backend={self.backend!r}, path={self.path!r})"

    # -------------------------------------------------------------- shared steps
    def _prepare(self, xs: tuple[Tensor, ...], g_row: Tensor, g_col: Tensor):
        plan = self.plan
        e, h = plan.n_experts, plan.n_heads
        if g_row.shape[-2:] != (h, e) or g_col.shape[-2:] != (h, e) or xs[0].shape[-2] != e:
            raise EditError(f"edit plan is for H={h}, E={e}; got g of shape {tuple(g_row.shape)} and "
                            f"activations {tuple(xs[0].shape)}")
        lead = xs[0].shape[:-2]
        flat_x = tuple(x.reshape(-1, e, x.shape[-1]) for x in xs)
        g1 = g_row.reshape(-1, h, e).to(flat_x[0].dtype)
        g2 = g_col.reshape(-1, h, e).to(flat_x[0].dtype)
        needs_grad = _needs_grad(*flat_x, g1, g2)
        grad_of_g = _needs_grad(g1, g2)
        backend = resolve_backend(self.backend, (*flat_x, g1, g2), needs_grad)
        path, self._lists = choose_path(plan, g1, g2, flat_x[0].shape[-1], self.path, grad_of_g)
        self.last_path, self.last_backend = path, backend
        return lead, flat_x, g1, g2, backend, path

    def _base(self, x: Tensor, ga: Tensor, gb: Tensor, transpose: bool, backend: str, path: str):
        """Unedited mix (or, on the dense path, the masked mix) contracting ga's axis toward gb's."""
        if path != "dense":
            return stock_mix_hd(x, ga, gb)
        S = self.plan.multiplier(x.device, x.dtype)
        if transpose:
            S = S.transpose(-1, -2)
        if backend == "triton":
            return _kernels().masked_mix(x, ga, gb, S.contiguous(), backend="triton")
        return masked_mix_torch(x, ga, gb, S)

    def _correct(self, g1: Tensor, g2: Tensor, targets: list[Target], backend: str, path: str) -> None:
        plan = self.plan
        device, dtype = g1.device, targets[0][0].dtype
        if path == "list":
            if backend == "triton":
                self._triton_list(g1, g2, targets)
            else:
                rows, cols, coef, const = plan.list_tensors(device, dtype)
                _list_correct(g1, g2, rows, cols, coef, const, targets)
            return
        if path == "sparse" and plan.n_linear:
            _sparse_correct(g1, g2, plan.coef_table(device, dtype), targets, self._lists)
        self._lists = None
        if plan.n_const:
            rows, cols, const = plan.const_tensors(device, dtype)
            _list_correct(g1, g2, rows, cols, None, const, targets)

    def _triton_list(self, g1: Tensor, g2: Tensor, targets: list[Target]) -> None:
        kernels = _kernels()
        for z, s, x, direction in targets:
            key = ("csr", direction, g1.device)
            csr = self.plan._cached(key, lambda d=direction: kernels.build_edit_csr(
                **self.plan.kernel_tensors(g1.device, torch.float32), E=self.plan.n_experts, direction=d))
            kernels.edit_correction(x, g1, g2, csr, out=(z, s), backend="triton")

    # -------------------------------------------------------------- the two mixes
    def mix_hd(self, acts: Float[Tensor, "*tokens expert m"], g_row: Float[Tensor, "*tokens head expert"],
               g_col: Float[Tensor, "*tokens head expert"]
               ) -> tuple[Float[Tensor, "*tokens expert m"], Float[Tensor, "*tokens expert"]]:
        lead, (x,), g1, g2, backend, path = self._prepare((acts,), g_row, g_col)
        z, c = self._base(x, g1, g2, False, backend, path)
        self._correct(g1, g2, [(z, c, x, "to_cols")], backend, path)
        return z.reshape(*lead, *z.shape[1:]), c.reshape(*lead, c.shape[-1])

    def mix_vd(self, acts_row: Float[Tensor, "*tokens expert half_m"], acts_col: Float[Tensor, "*tokens expert half_m"],
               g_row: Float[Tensor, "*tokens head expert"], g_col: Float[Tensor, "*tokens head expert"]
               ) -> tuple[Tensor, ...]:
        lead, (x_row, x_col), g1, g2, backend, path = self._prepare((acts_row, acts_col), g_row, g_col)
        z12, r = self._base(x_col, g2, g1, True, backend, path)  # contract over j toward rows i
        z21, c = self._base(x_row, g1, g2, False, backend, path)  # contract over i toward columns j
        self._correct(g1, g2, [(z21, c, x_row, "to_cols"), (z12, r, x_col, "to_rows")], backend, path)
        z11, z22 = r[..., None] * x_row, c[..., None] * x_col
        shape = lambda t: t.reshape(*lead, *t.shape[1:])  # noqa: E731
        return shape(z11), shape(z12), shape(r), shape(z21), shape(z22), shape(c)
