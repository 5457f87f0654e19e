"""Fused Triton correction-list kernel (cost grows with the number of edits K, not E^2).

Import this module only after deciding compiled vs interpreted Triton (``TRITON_INTERPRET=1``
must be in the environment before the import on CPU); see ``dispatch.use_interpreter``.

Design: the edit list is sorted by target expert (``EditCSR``). The grid is
(token blocks, active targets); the program owning (token block, target e) walks the
edits of e (``active_ptr[u]:active_ptr[u+1]``), computes each edit's weight change for its
tokens from g1[t,:,i] and g2[t,:,j] (heads padded to a power of two and masked), and
accumulates delta * x[t, src, :] and delta in float32 registers. Each output row
(t, e) is owned by exactly one program: deterministic gather-and-sum, no atomics.
Targets without edits are never visited (the caller zero-fills, or adds in place).
"""

from __future__ import annotations

import typing

import torch
import triton
import triton.language as tl
from jaxtyping import Float
from torch import Tensor

from .dispatch import block_size
from .reference import EditCSR, result_dtype

#: Whether this module's kernels were created for the CPU interpreter (fixed at import,
#: exactly when ``@triton.jit`` read TRITON_INTERPRET).
INTERPRETED: bool = bool(triton.knobs.runtime.interpret)


# The jaxtyping import hook (pytest --jaxtyping-packages=monet_interp) wraps every function
# of this package in a runtime type checker; @typing.no_type_check makes it skip the kernel
# body, which Triton must see unwrapped.
@triton.jit
@typing.no_type_check
def _correction_list_kernel(
    x_ptr, g1_ptr, g2_ptr,
    rows_ptr, cols_ptr, ops_ptr, vals_ptr, hmask_ptr, perhead_ptr,
    active_tgt_ptr, active_ptr_ptr,
    z_ptr, c_ptr,
    T, H, M,
    sxt, sxe, sxm,
    s1t, s1h, s1e,
    s2t, s2h, s2e,
    szt, sze, szm,
    sct, sce,
    TO_COLS: tl.constexpr,
    ACCUMULATE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    pid_t = tl.program_id(0)
    u = tl.program_id(1)

    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_h = tl.arange(0, BLOCK_H)
    offs_m = tl.arange(0, BLOCK_M)
    t_ok = offs_t < T
    h_ok = offs_h < H
    m_ok = offs_m < M
    offs_t64 = offs_t.to(tl.int64)

    tgt = tl.load(active_tgt_ptr + u)
    k_lo = tl.load(active_ptr_ptr + u)
    k_hi = tl.load(active_ptr_ptr + u + 1)

    acc = tl.zeros((BLOCK_T, BLOCK_M), dtype=tl.float32)
    acc_c = tl.zeros((BLOCK_T,), dtype=tl.float32)
    th_ok = t_ok[:, None] & h_ok[None, :]
    tm_ok = t_ok[:, None] & m_ok[None, :]

    for k in range(k_lo, k_hi):
        i = tl.load(rows_ptr + k)
        j = tl.load(cols_ptr + k)
        op = tl.load(ops_ptr + k).to(tl.int32)
        v = tl.load(vals_ptr + k).to(tl.float32)
        ph = tl.load(perhead_ptr + k).to(tl.int32)
        hm = tl.load(hmask_ptr + k * H + offs_h, mask=h_ok, other=0).to(tl.int32)
        sel = th_ok & (hm[None, :] != 0)

        w1 = tl.load(g1_ptr + offs_t64[:, None] * s1t + offs_h[None, :] * s1h + i * s1e,
                     mask=th_ok, other=0.0).to(tl.float32)
        w2 = tl.load(g2_ptr + offs_t64[:, None] * s2t + offs_h[None, :] * s2h + j * s2e,
                     mask=th_ok, other=0.0).to(tl.float32)
        w = tl.where(sel, w1 * w2, 0.0)                       # [BLOCK_T, BLOCK_H]

        # all-heads edit: s = sum over selected heads, delta = op(s) - s
        s = tl.sum(w, axis=1)                                 # [BLOCK_T]
        new_s = tl.where(op == 0, v * s, tl.where(op == 1, v, s + v))
        d_all = new_s - s
        # per-head edit: delta = sum over selected heads of op(w_h) - w_h
        new_w = tl.where(op == 0, v * w, tl.where(op == 1, v, w + v))
        d_ph = tl.sum(tl.where(sel, new_w - w, 0.0), axis=1)
        delta = tl.where(ph != 0, d_ph, d_all)
        delta = tl.where(t_ok, delta, 0.0)

        if TO_COLS:
            src = i
        else:
            src = j
        xv = tl.load(x_ptr + offs_t64[:, None] * sxt + src * sxe + offs_m[None, :] * sxm,
                     mask=tm_ok, other=0.0).to(tl.float32)
        acc += delta[:, None] * xv
        acc_c += delta

    z_ptrs = z_ptr + offs_t64[:, None] * szt + tgt * sze + offs_m[None, :] * szm
    c_ptrs = c_ptr + offs_t64 * sct + tgt * sce
    if ACCUMULATE:
        acc += tl.load(z_ptrs, mask=tm_ok, other=0.0).to(tl.float32)
        acc_c += tl.load(c_ptrs, mask=t_ok, other=0.0).to(tl.float32)
    tl.store(z_ptrs, acc.to(z_ptr.dtype.element_ty), mask=tm_ok)
    tl.store(c_ptrs, acc_c.to(c_ptr.dtype.element_ty), mask=t_ok)


def _block_t(T: int) -> int:
    # 16..64 tokens per program: enough rows per gather on a GPU, few programs in the
    # interpreter (which runs them one after another).
    return block_size(T, minimum=16, maximum=64)


def correction_list_triton(
    x: Float[Tensor, "T E m"],
    g1: Float[Tensor, "T H E"],
    g2: Float[Tensor, "T H E"],
    csr: EditCSR,
    *,
    out: tuple[Float[Tensor, "T E m"], Float[Tensor, "T E"]] | None = None,
) -> tuple[Float[Tensor, "T E m"], Float[Tensor, "T E"]]:
    """Triton version of :func:`reference.correction_list_ref` (same signature and semantics).

    Returns (dz [T,E,m], dc [T,E]) in the promoted input dtype, float32 accumulation, or adds
    into ``out=(z, c)`` in place (deterministically: each (t, target) row has one owner).
    ``csr`` must live on x's device. An empty list launches nothing.
    """
    T, E, m = x.shape
    H = g1.shape[1]
    if csr.E != E:
        raise ValueError(f"edit list was built for E={csr.E}, x has E={E}")
    if csr.K and csr.H != H:
        raise ValueError(f"edit list head_mask has H={csr.H}, g1 has H={H}")
    dtype = result_dtype(x, g1, g2)
    if out is None:
        z = torch.zeros(T, E, m, dtype=dtype, device=x.device)
        c = torch.zeros(T, E, dtype=dtype, device=x.device)
    else:
        z, c = out
    if csr.K == 0 or T == 0:
        return z, c
    if csr.device != x.device:
        raise ValueError(f"edit list is on {csr.device}, tensors on {x.device}")

    hmask = csr.head_mask.to(torch.int8).contiguous()
    perhead = csr.per_head.to(torch.int8)
    BLOCK_T = _block_t(T)
    grid = (triton.cdiv(T, BLOCK_T), csr.n_active)
    _correction_list_kernel[grid](
        x, g1, g2,
        csr.rows, csr.cols, csr.ops, csr.values, hmask, perhead,
        csr.active_tgt, csr.active_ptr,
        z, c,
        T, H, m,
        *x.stride(), *g1.stride(), *g2.stride(), *z.stride(), *c.stride(),
        TO_COLS=csr.direction == "to_cols",
        ACCUMULATE=out is not None,
        BLOCK_T=BLOCK_T,
        BLOCK_H=block_size(H),
        BLOCK_M=block_size(m),
        num_warps=4,
    )
    return z, c
