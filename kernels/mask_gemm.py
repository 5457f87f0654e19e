"""Mask-GEMM Triton kernel: the MONET mix under a dense expert multiplier S.

Import this module only after deciding compiled vs interpreted Triton (``TRITON_INTERPRET=1``
must be in the environment before the import on CPU); see ``dispatch.use_interpreter``.

Computes, for S [E,E] (shared) or [H,E,E] (per head), 1 keep / 0 prune / s scale:

    z[t,j,:] = sum_h g2[t,h,j] * sum_i g1[t,h,i] * S[(h),i,j] * x[t,i,:]
    c[t,j]   = the same with x replaced by 1 (ones channel)

GEMM form. For head h the operand P_h[(t,c), i] = g1[t,h,i] * x[t,i,c] is built in registers
in the GEMM prologue (never stored), contracted with the tile S_h[i, j] (tl.dot, K = i), and
the routing factor g2[t,h,j] is applied in the epilogue of the head before summing heads:

    program (token block, j block):
      for h:            acc = sum_i P_h[(t,c), i] S_h[i, j];  acc1 = sum_i g1[t,h,i] S_h[i, j]
                        z += g2[t,h,j] * acc;                c += g2[t,h,j] * acc1

Cost 2*T*H*E^2*(m+1) FLOPs, independent of how many experts S edits; memory per program is
a few tiles. A shared S is passed with head stride 0. m is padded to a power of two and
masked (m = 12 in some releases); the token block is >= 16 so both dots have M >= 16, and the
i/j blocks are >= 16 (GPU tl.dot rule for 16-bit data).

Precision: loads are cast to float32 right away; on a GPU 16-bit inputs are multiplied on the
tensor cores in their own dtype (S rounded to it too) with float32 accumulation, float32
inputs use input_precision="ieee" (exact fp32, no TF32). Under the interpreter everything is
float32 (its bf16 arithmetic is unreliable).
"""

from __future__ import annotations

import typing

import torch
import triton
import triton.language as tl
from jaxtyping import Float
from torch import Tensor

from .dispatch import block_size
from .reference import result_dtype

#: Whether this module's kernels were created for the CPU interpreter (fixed at import).
INTERPRETED: bool = bool(triton.knobs.runtime.interpret)


# @typing.no_type_check: keeps the jaxtyping import hook from wrapping the kernel body.
@triton.jit
@typing.no_type_check
def _masked_mix_kernel(
    x_ptr, g1_ptr, g2_ptr, s_ptr, z_ptr, c_ptr,
    T, H, E, M,
    sxt, sxe, sxm,
    s1t, s1h, s1e,
    s2t, s2h, s2e,
    ssh, ssi, ssj,
    szt, sze, szm,
    sct, sce,
    DOT_16BIT: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_I: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_j = tl.program_id(1)

    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_m = tl.arange(0, BLOCK_M)
    offs_j = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
    offs_i0 = tl.arange(0, BLOCK_I)
    t_ok = offs_t < T
    m_ok = offs_m < M
    j_ok = offs_j < E
    offs_t64 = offs_t.to(tl.int64)

    tm_ok = t_ok[:, None, None] & m_ok[None, :, None]
    # Pointer tiles for i block 0 and head 0; loops only add scalar offsets to them.
    x_base = (x_ptr + offs_t64[:, None, None] * sxt + offs_m[None, :, None] * sxm
              + offs_i0[None, None, :] * sxe)                                  # [BT, BM, BI]
    g1_base = g1_ptr + offs_t64[:, None] * s1t + offs_i0[None, :] * s1e         # [BT, BI]
    s_base = s_ptr + offs_i0[:, None] * ssi + offs_j[None, :] * ssj             # [BI, BJ]
    g2_base = g2_ptr + offs_t64[:, None] * s2t + offs_j[None, :] * s2e          # [BT, BJ]
    tj_ok = t_ok[:, None] & j_ok[None, :]

    z_acc = tl.zeros((BLOCK_T, BLOCK_M, BLOCK_J), dtype=tl.float32)
    c_acc = tl.zeros((BLOCK_T, BLOCK_J), dtype=tl.float32)

    for h in range(0, H):
        acc = tl.zeros((BLOCK_T * BLOCK_M, BLOCK_J), dtype=tl.float32)
        acc1 = tl.zeros((BLOCK_T, BLOCK_J), dtype=tl.float32)
        x_ptrs = x_base
        g1_ptrs = g1_base + h * s1h
        s_ptrs = s_base + h * ssh
        for i0 in range(0, E, BLOCK_I):
            i_ok = (i0 + offs_i0) < E
            g1t = tl.load(g1_ptrs, mask=t_ok[:, None] & i_ok[None, :], other=0.0
                          ).to(tl.float32)                                      # [BT, BI]
            xt = tl.load(x_ptrs, mask=tm_ok & i_ok[None, None, :], other=0.0
                         ).to(tl.float32)                                       # [BT, BM, BI]
            p = tl.reshape(xt * g1t[:, None, :], (BLOCK_T * BLOCK_M, BLOCK_I))
            st = tl.load(s_ptrs, mask=i_ok[:, None] & j_ok[None, :], other=0.0
                         ).to(tl.float32)                                       # [BI, BJ]
            if DOT_16BIT:
                st16 = st.to(x_ptr.dtype.element_ty)
                acc = tl.dot(p.to(x_ptr.dtype.element_ty), st16, acc)
                acc1 = tl.dot(g1t.to(x_ptr.dtype.element_ty), st16, acc1)
            else:
                acc = tl.dot(p, st, acc, input_precision="ieee")
                acc1 = tl.dot(g1t, st, acc1, input_precision="ieee")
            x_ptrs += BLOCK_I * sxe
            g1_ptrs += BLOCK_I * s1e
            s_ptrs += BLOCK_I * ssi
        g2t = tl.load(g2_base + h * s2h, mask=tj_ok, other=0.0).to(tl.float32)  # [BT, BJ]
        z_acc += tl.reshape(acc, (BLOCK_T, BLOCK_M, BLOCK_J)) * g2t[:, None, :]
        c_acc += acc1 * g2t

    z_ptrs = (z_ptr + offs_t64[:, None, None] * szt + offs_m[None, :, None] * szm
              + offs_j[None, None, :] * sze)
    z_mask = t_ok[:, None, None] & m_ok[None, :, None] & j_ok[None, None, :]
    tl.store(z_ptrs, z_acc.to(z_ptr.dtype.element_ty), mask=z_mask)
    c_ptrs = c_ptr + offs_t64[:, None] * sct + offs_j[None, :] * sce
    tl.store(c_ptrs, c_acc.to(c_ptr.dtype.element_ty), mask=tj_ok)


def _gpu_configs() -> list[triton.Config]:
    cfgs = []
    # Per program: BLOCK_T*BLOCK_M x BLOCK_J float32 for the head accumulator and as much for
    # the running sum (BLOCK_T = 16, BLOCK_M = 16 at m = 16): keep BLOCK_J moderate.
    for bi, bj, warps in ((32, 32, 4), (64, 32, 4), (32, 64, 4), (64, 64, 8)):
        for stages in (2, 3):
            cfgs.append(triton.Config({"BLOCK_I": bi, "BLOCK_J": bj}, num_warps=warps,
                                      num_stages=stages))
    return cfgs


if INTERPRETED:
    # No autotuning under the interpreter (several configs need a GPU driver): the wrapper
    # passes one set of block sizes to the plain kernel.
    _masked_mix_autotuned = None
else:
    _masked_mix_autotuned = triton.autotune(
        configs=_gpu_configs(), key=["H", "E", "M", "DOT_16BIT"]
    )(_masked_mix_kernel)


def masked_mix_triton(
    x: Float[Tensor, "T E m"],
    g1: Float[Tensor, "T H E"],
    g2: Float[Tensor, "T H E"],
    S: Float[Tensor, "E E"] | Float[Tensor, "H E E"],
) -> tuple[Float[Tensor, "T E m"], Float[Tensor, "T E"]]:
    """Triton version of :func:`reference.masked_mix_ref` (same signature and semantics).

    z[t,j,:] = sum_h g2[t,h,j] sum_i g1[t,h,i] S[(h),i,j] x[t,i,:], c[t,j] = same with x -> 1.
    Results in the promoted input dtype, float32 accumulation. For VD's other direction
    (contract over j, indexed by i) call ``masked_mix_triton(x2, g2, g1, S.transpose(-1, -2))``.
    Any strides are accepted (no copies).
    """
    T, E, m = x.shape
    H = g1.shape[1]
    dtype = result_dtype(x, g1, g2)
    z = torch.empty(T, E, m, dtype=dtype, device=x.device)
    c = torch.empty(T, E, dtype=dtype, device=x.device)
    if T == 0:
        return z, c
    if S.dim() == 2:
        ssh, ssi, ssj = 0, S.stride(0), S.stride(1)
    else:
        ssh, ssi, ssj = S.stride()
    dot16 = (not INTERPRETED) and x.dtype in (torch.bfloat16, torch.float16)
    # BLOCK_T >= 16: M of the ones-channel dot. The interpreter runs programs one after
    # another and pays per operation, not per element: fewer, larger tiles there.
    BLOCK_T = block_size(T, minimum=16, maximum=32) if INTERPRETED else 16
    BLOCK_M = block_size(m)
    args = (
        x, g1, g2, S, z, c,
        T, H, E, m,
        *x.stride(), *g1.stride(), *g2.stride(), ssh, ssi, ssj, *z.stride(), *c.stride(),
    )
    if _masked_mix_autotuned is None:
        BLOCK_I = block_size(E, minimum=16, maximum=128)
        BLOCK_J = block_size(E, minimum=16, maximum=128)
        grid = (triton.cdiv(T, BLOCK_T), triton.cdiv(E, BLOCK_J))
        _masked_mix_kernel[grid](
            *args, DOT_16BIT=dot16, BLOCK_T=BLOCK_T, BLOCK_M=BLOCK_M,
            BLOCK_I=BLOCK_I, BLOCK_J=BLOCK_J,
        )
    else:
        def grid(meta: dict) -> tuple[int, int]:
            return (triton.cdiv(T, meta["BLOCK_T"]), triton.cdiv(E, meta["BLOCK_J"]))

        _masked_mix_autotuned[grid](*args, DOT_16BIT=dot16, BLOCK_T=BLOCK_T, BLOCK_M=BLOCK_M)
    return z, c
