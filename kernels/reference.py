"""Plain-torch references for the masked-routing kernels, and the edit-list container.

Notation (see /work/shared/reference/editing.md): T tokens (flattened batch*pos), H heads,
E experts per axis, m = expert dim. ``g1[T,H,E]`` are the row factors (index i), ``g2[T,H,E]``
the column factors (index j); expert (i, j) of head h has weight g1[t,h,i] * g2[t,h,j].
``x[T,E,m]`` holds per-expert activations.

Everything here is a pure function over tensors. Arithmetic is done in float32 whatever the
input dtype; results are returned in ``result_dtype(x, g1, g2)`` (the promoted input dtype).

Two families, each mirrored by a Triton kernel with the same signature:

* correction list (:func:`correction_list_ref`, cost ~ T * K * (H + m) for K edits): the
  change of the mix output caused by editing K experts, built from :func:`edit_deltas` and
  :func:`apply_corrections`;
* mask-GEMM (:func:`masked_mix_ref`, cost independent of the number of edits): the mix under
  a dense per-expert multiplier S.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int, Shaped
from torch import Tensor

OP_SCALE = 0  #: new weight = value * w  (prune = scale by 0)
OP_SET = 1  #: new weight = value
OP_ADD = 2  #: new weight = w + value
OP_NAMES = {"scale": OP_SCALE, "set": OP_SET, "add": OP_ADD}

Direction = Literal["to_cols", "to_rows"]
DIRECTIONS: tuple[str, ...] = ("to_cols", "to_rows")


def result_dtype(*tensors: Tensor) -> torch.dtype:
    """Promoted floating dtype of the inputs (bf16 stays bf16, any fp32 input gives fp32)."""
    dt = tensors[0].dtype
    for t in tensors[1:]:
        dt = torch.promote_types(dt, t.dtype)
    return dt


# --------------------------------------------------------------------------------------
# Edit list in target-sorted (CSR) form
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class EditCSR:
    """An edit list of K experts sorted (stably) by target expert, with CSR pointers.

    Build it once with :func:`build_edit_csr` and cache it; it is specific to one
    ``direction``: ``"to_cols"`` corrects the contraction toward the column axis
    (src = rows i, tgt = cols j; HD, and VD's bottom half), ``"to_rows"`` toward the row axis
    (src = cols j, tgt = rows i; VD's top half).

    Fields (all on one device, entries in sorted order):
      rows, cols [K] int64: expert (i, j) of each edit;
      ops [K] int8: OP_SCALE / OP_SET / OP_ADD;  values [K] float32;
      head_mask [K, H] bool: heads the edit applies to;  per_head [K] bool;
      order [K] int64: position of each sorted entry in the list given to build_edit_csr;
      tgt_ptr [E+1] int64: edits of target e are entries tgt_ptr[e]:tgt_ptr[e+1];
      active_tgt [U] int64: targets with at least one edit (ascending);
      active_ptr [U+1] int64: CSR pointers over active_tgt (what the Triton kernel launches on).
    """

    rows: Int[Tensor, " K"]
    cols: Int[Tensor, " K"]
    ops: Int[Tensor, " K"]
    values: Float[Tensor, " K"]
    head_mask: Bool[Tensor, "K H"]
    per_head: Bool[Tensor, " K"]
    order: Int[Tensor, " K"]
    tgt_ptr: Int[Tensor, " Ep1"]
    active_tgt: Int[Tensor, " U"]
    active_ptr: Int[Tensor, " Up1"]
    E: int
    direction: Direction

    @property
    def K(self) -> int:
        return int(self.rows.shape[0])

    @property
    def H(self) -> int:
        return int(self.head_mask.shape[1])

    @property
    def n_active(self) -> int:
        return int(self.active_tgt.shape[0])

    @property
    def src(self) -> Int[Tensor, " K"]:
        """Source expert of each edit (the index x is gathered at)."""
        return self.rows if self.direction == "to_cols" else self.cols

    @property
    def tgt(self) -> Int[Tensor, " K"]:
        """Target expert of each edit (the index the correction lands on); sorted."""
        return self.cols if self.direction == "to_cols" else self.rows

    @property
    def device(self) -> torch.device:
        return self.rows.device

    def to(self, device: torch.device | str) -> "EditCSR":
        kw = {
            name: getattr(self, name).to(device)
            for name in (
                "rows", "cols", "ops", "values", "head_mask", "per_head",
                "order", "tgt_ptr", "active_tgt", "active_ptr",
            )
        }
        return EditCSR(**kw, E=self.E, direction=self.direction)


def build_edit_csr(
    rows: Int[Tensor, " K"],
    cols: Int[Tensor, " K"],
    ops: Int[Tensor, " K"],
    values: Float[Tensor, " K"],
    head_mask: Bool[Tensor, "K H"],
    per_head: Bool[Tensor, " K"],
    E: int,
    direction: Direction = "to_cols",
    *,
    validate: bool = True,
) -> EditCSR:
    """Sort an edit list by target and build CSR pointers (do this once and cache it).

    ``validate`` checks index ranges, op codes and that no expert (i, j) appears twice
    (the corrections of duplicated experts would not compose); it syncs with the device.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    device = rows.device
    rows = rows.to(device=device, dtype=torch.int64)
    cols = cols.to(device=device, dtype=torch.int64)
    ops = ops.to(device=device, dtype=torch.int8)
    values = values.to(device=device, dtype=torch.float32)
    head_mask = head_mask.to(device=device, dtype=torch.bool)
    per_head = per_head.to(device=device, dtype=torch.bool)
    K = rows.shape[0]
    if validate and K > 0:
        if int(rows.min()) < 0 or int(rows.max()) >= E or int(cols.min()) < 0 or int(cols.max()) >= E:
            raise ValueError(f"edit rows/cols must lie in [0, {E})")
        if int(ops.min()) < OP_SCALE or int(ops.max()) > OP_ADD:
            raise ValueError("ops must be 0 (scale), 1 (set) or 2 (add)")
        if torch.unique(rows * E + cols).numel() != K:
            raise ValueError("an expert (i, j) appears more than once in the edit list")
    tgt = cols if direction == "to_cols" else rows
    tgt_sorted, order = torch.sort(tgt, stable=True)
    counts = torch.bincount(tgt_sorted, minlength=E)
    tgt_ptr = torch.zeros(E + 1, dtype=torch.int64, device=device)
    tgt_ptr[1:] = torch.cumsum(counts, 0)
    active_tgt = torch.nonzero(counts, as_tuple=False).flatten().to(torch.int64)
    active_ptr = torch.cat([tgt_ptr[active_tgt], tgt_ptr[-1:]])
    return EditCSR(
        rows=rows[order],
        cols=cols[order],
        ops=ops[order],
        values=values[order],
        head_mask=head_mask[order],
        per_head=per_head[order],
        order=order,
        tgt_ptr=tgt_ptr,
        active_tgt=active_tgt,
        active_ptr=active_ptr,
        E=int(E),
        direction=direction,
    )


# --------------------------------------------------------------------------------------
# Correction list (reference)
# --------------------------------------------------------------------------------------


def _apply_op(ops: Shaped[Tensor, " K"], values: Float[Tensor, " K"], w: Float[Tensor, "*b K"]) -> Float[Tensor, "*b K"]:
    """op(w) per edit, broadcasting the [K] op codes and values over w's leading dims."""
    return torch.where(
        ops == OP_SCALE, values * w, torch.where(ops == OP_SET, values, w + values)
    )


def edit_deltas(
    g1: Float[Tensor, "T H E"],
    g2: Float[Tensor, "T H E"],
    rows: Int[Tensor, " K"],
    cols: Int[Tensor, " K"],
    ops: Int[Tensor, " K"],
    values: Float[Tensor, " K"],
    head_mask: Bool[Tensor, "K H"],
    per_head: Bool[Tensor, " K"],
) -> Float[Tensor, "T K"]:
    """Change of each edited expert's weight, per token (float32).

    With w_h = g1[t,h,i] g2[t,h,j] and the heads M_k = head_mask[k]:
      all-heads edit (per_head False): s = sum_{h in M_k} w_h, delta = op(s) - s;
      per-head edit (per_head True):  delta = sum_{h in M_k} (op(w_h) - w_h);
    op = scale: value * w; set: value; add: w + value (prune = scale by 0).
    """
    g1f = g1.float()
    g2f = g2.float()
    ops_ = ops.to(device=g1.device)
    vals = values.to(device=g1.device, dtype=torch.float32)
    hm = head_mask.to(device=g1.device, dtype=torch.float32).T  # [H, K]
    w = g1f[:, :, rows] * g2f[:, :, cols]  # [T, H, K]
    s = (w * hm).sum(1)  # [T, K]
    d_all = _apply_op(ops_, vals, s) - s
    opw = _apply_op(ops_, vals, w)
    d_ph = ((opw - w) * hm).sum(1)
    return torch.where(per_head.to(g1.device), d_ph, d_all)


def apply_corrections(
    x: Float[Tensor, "T E m"],
    delta: Float[Tensor, "T K"],
    src: Int[Tensor, " K"],
    tgt: Int[Tensor, " K"],
) -> tuple[Float[Tensor, "T E m"], Float[Tensor, "T E"]]:
    """dz[t, tgt_k, :] += delta[t,k] * x[t, src_k, :] and dc[t, tgt_k] += delta[t,k].

    Float32 results. Uses index_add_ (sequential, deterministic on CPU; summation order is
    not fixed on CUDA, which only matters at the last bit).
    """
    T, E, m = x.shape
    dz = torch.zeros(T, E, m, dtype=torch.float32, device=x.device)
    dc = torch.zeros(T, E, dtype=torch.float32, device=x.device)
    if src.numel() == 0:
        return dz, dc
    d = delta.float()
    dz.index_add_(1, tgt, d[:, :, None] * x.float()[:, src, :])
    dc.index_add_(1, tgt, d)
    return dz, dc


def _finish(
    dz: Float[Tensor, "T E m"],
    dc: Float[Tensor, "T E"],
    dtype: torch.dtype,
    out: tuple[Tensor, Tensor] | None,
) -> tuple[Float[Tensor, "T E m"], Float[Tensor, "T E"]]:
    if out is None:
        return dz.to(dtype), dc.to(dtype)
    z, c = out
    z.copy_((z.float() + dz).to(z.dtype))
    c.copy_((c.float() + dc).to(c.dtype))
    return z, c


def correction_list_ref(
    x: Float[Tensor, "T E m"],
    g1: Float[Tensor, "T H E"],
    g2: Float[Tensor, "T H E"],
    csr: EditCSR,
    *,
    out: tuple[Float[Tensor, "T E m"], Float[Tensor, "T E"]] | None = None,
) -> tuple[Float[Tensor, "T E m"], Float[Tensor, "T E"]]:
    """Correction (dz [T,E,m], dc [T,E]) of the mix for the edits in ``csr``.

    ``csr.direction == "to_cols"``: dz[t,j,:] = sum_{edits k with col j} delta[t,k] x[t,i_k,:];
    ``"to_rows"``: dz[t,i,:] = sum_{edits k with row i} delta[t,k] x[t,j_k,:]; dc likewise
    with x replaced by 1. Add dz to z and dc to c (the ones channel) of the unedited mix.
    With ``out=(z, c)`` the correction is added into z and c in place and they are returned.
    An empty list returns zeros (or ``out`` untouched).
    """
    dtype = result_dtype(x, g1, g2)
    T, E, m = x.shape
    if csr.K == 0:
        if out is not None:
            return out
        return (
            torch.zeros(T, E, m, dtype=dtype, device=x.device),
            torch.zeros(T, E, dtype=dtype, device=x.device),
        )
    delta = edit_deltas(
        g1, g2, csr.rows, csr.cols, csr.ops, csr.values, csr.head_mask, csr.per_head
    )
    dz, dc = apply_corrections(x, delta, csr.src, csr.tgt)
    return _finish(dz, dc, dtype, out)


# --------------------------------------------------------------------------------------
# Mask-GEMM (reference)
# --------------------------------------------------------------------------------------


def masked_mix_ref(
    x: Float[Tensor, "T E m"],
    g1: Float[Tensor, "T H E"],
    g2: Float[Tensor, "T H E"],
    S: Float[Tensor, "E E"] | Float[Tensor, "H E E"],
) -> tuple[Float[Tensor, "T E m"], Float[Tensor, "T E"]]:
    """Mix under a dense multiplier S (1 keep, 0 prune, s scale), shared [E,E] or per head [H,E,E]:

      z[t,j,:] = sum_h g2[t,h,j] * sum_i g1[t,h,i] * S[(h),i,j] * x[t,i,:]
      c[t,j]   = the same with x replaced by 1 (the "ones channel", bias coefficient).

    With S == 1 this is the unedited MONET mix (contraction toward the column axis). For the
    other direction (VD: contract over j, indexed by i) call ``masked_mix_ref(x2, g2, g1, S^T)``
    with S^T = S.transpose(-1, -2): it returns z[t,i,:] = sum_h g1[t,h,i] sum_j g2[t,h,j]
    S[(h),i,j] x2[t,j,:] and c[t,i] = the row sums r.

    GEMM form, per head: (g1[t,h,:,None] * [x[t], 1]) contracted with S over i, then scaled
    by g2[t,h,j] and summed over heads. Memory O(T*H*E*m), never O(E^2) per token.
    """
    dtype = result_dtype(x, g1, g2)
    g1f, g2f, xf, Sf = g1.float(), g2.float(), x.float(), S.float()
    P = g1f[:, :, :, None] * xf[:, None, :, :]  # [T, H, E(i), m]
    if Sf.dim() == 2:
        Y = torch.einsum("thim,ij->thjm", P, Sf)
        Y1 = torch.einsum("thi,ij->thj", g1f, Sf)
    else:
        Y = torch.einsum("thim,hij->thjm", P, Sf)
        Y1 = torch.einsum("thi,hij->thj", g1f, Sf)
    z = (g2f[:, :, :, None] * Y).sum(1)
    c = (g2f * Y1).sum(1)
    return z.to(dtype), c.to(dtype)


def unedited_mix_ref(
    x: Float[Tensor, "T E m"],
    g1: Float[Tensor, "T H E"],
    g2: Float[Tensor, "T H E"],
) -> tuple[Float[Tensor, "T E m"], Float[Tensor, "T E"]]:
    """The stock MONET mix, z = einsum("tim,thi,thj->tjm"), c = einsum("thi,thj->tj")
    (= sum_h g2 when every g1[t,h,:] sums to 1, the shortcut the released code takes)."""
    dtype = result_dtype(x, g1, g2)
    z = torch.einsum("tim,thi,thj->tjm", x.float(), g1.float(), g2.float())
    c = torch.einsum("thi,thj->tj", g1.float(), g2.float())
    return z.to(dtype), c.to(dtype)
