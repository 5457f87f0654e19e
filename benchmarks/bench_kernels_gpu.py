"""GPU timing of the masked-routing kernels: Triton vs torch reference vs explicit expansion.

    python benchmarks/bench_kernels_gpu.py                 # T=4096, H=8, E=512, m=16, bf16
    python benchmarks/bench_kernels_gpu.py --edits 20000 --dtype fp32

Reports milliseconds (triton.testing.do_bench, median) and the achieved bandwidth as a fraction
of the H200's ~4.3 TB/s, computed from each workload's *compulsory* bytes (the same byte count
for the three implementations of one workload, so the fractions compare like with like):

* mask-GEMM (masked_mix):  read x, g1, g2, S; write z, c;
* correction list:         per token and edit, gather H values of g1, H of g2 and m of x;
                           read-modify-write z, c rows of the edited targets.

The explicit expansion materialises g[t,h,i,j] = g1 g2 in token chunks (``--chunk``) and
applies S to it (the authors' approach); it is timed once and serves both workloads.
Without a CUDA device the script prints a message and exits with status 0.
``--cpu-smoke`` runs tiny sizes under the Triton interpreter (checks the script, not speed).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

PEAK_BYTES_PER_S = 4.3e12  # H200 copy bandwidth


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", type=int, default=4096, help="tokens")
    p.add_argument("--H", type=int, default=8, help="routing heads")
    p.add_argument("--E", type=int, default=512, help="experts per axis")
    p.add_argument("--m", type=int, default=16, help="expert dim")
    p.add_argument("--topk", type=int, default=8, help="non-zero routing factors per (token, head)")
    p.add_argument("--edits", type=int, default=10000, help="edited experts in the correction list")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--chunk", type=int, default=256, help="tokens per chunk of the explicit expansion")
    p.add_argument("--no-expansion", action="store_true", help="skip the explicit expansion")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="no GPU: tiny sizes under TRITON_INTERPRET=1, wall-clock timing")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cpu_smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
        args.T, args.H, args.E, args.m, args.edits, args.chunk = 8, 2, 32, 4, 20, 4

    import torch

    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("bench_kernels_gpu: no CUDA device found; this benchmark needs a GPU. Nothing timed.")
        return 0

    import monet_interp.kernels as K

    device = "cpu" if args.cpu_smoke else "cuda"
    if args.cpu_smoke:
        K.use_interpreter()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    T, H, E, m = args.T, args.H, args.E, args.m
    gen = torch.Generator(device=device).manual_seed(0)

    def factors() -> torch.Tensor:
        logits = torch.randn(T, H, E, device=device, generator=gen)
        thr = logits.topk(min(args.topk, E), dim=-1).values[..., -1:]
        return torch.where(logits >= thr, logits, torch.full_like(logits, -torch.inf)).softmax(-1).to(dtype)

    g1, g2 = factors(), factors()
    x = torch.randn(T, E, m, device=device, generator=gen).to(dtype)

    # Edit list: n_edits distinct experts, half prunes, half scales, all heads.
    n_edits = min(args.edits, E * E)
    flat = torch.randperm(E * E, device=device, generator=gen)[:n_edits]
    rows, cols = flat // E, flat % E
    ops = torch.zeros(n_edits, dtype=torch.int8, device=device)
    values = torch.where(torch.arange(n_edits, device=device) % 2 == 0, 0.0, 0.5).float()
    head_mask = torch.ones(n_edits, H, dtype=torch.bool, device=device)
    per_head = torch.zeros(n_edits, dtype=torch.bool, device=device)
    csr = K.build_edit_csr(rows, cols, ops, values, head_mask, per_head, E=E, direction="to_cols")
    S = torch.ones(E, E, device=device)
    S[rows, cols] = values

    if args.cpu_smoke:
        def bench(fn) -> float:
            fn()
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
    else:
        from triton.testing import do_bench

        def bench(fn) -> float:
            return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))

    def expansion() -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.empty(T, E, m, dtype=dtype, device=device)
        c = torch.empty(T, E, dtype=dtype, device=device)
        for s in range(0, T, args.chunk):
            e = min(T, s + args.chunk)
            G = g1[s:e, :, :, None] * g2[s:e, :, None, :]  # [t, H, E, E], the expansion
            W = (G * S.to(dtype)).sum(1)
            z[s:e] = torch.einsum("tij,tim->tjm", W, x[s:e])
            c[s:e] = W.sum(1)
        return z, c

    el = torch.finfo(dtype).bits // 8
    mix_bytes = (T * E * m + 2 * T * H * E) * el + E * E * 4 + T * E * (m + 1) * el
    corr_bytes = T * n_edits * (2 * H + m) * el + 2 * T * csr.n_active * (m + 1) * el

    z0, c0 = K.unedited_mix_ref(x, g1, g2)
    z0, c0 = z0.contiguous(), c0.contiguous()
    zc, cc = z0.clone(), c0.clone()

    def corr_triton():
        zc.copy_(z0)
        cc.copy_(c0)
        K.correction_list_triton(x, g1, g2, csr, out=(zc, cc))

    def corr_ref():
        zc.copy_(z0)
        cc.copy_(c0)
        K.correction_list_ref(x, g1, g2, csr, out=(zc, cc))

    # Correctness first (prints, does not fail): Triton vs reference.
    zt, ct = K.masked_mix_triton(x, g1, g2, S)
    zr, cr = K.masked_mix_ref(x, g1, g2, S)
    err_mix = max((zt.float() - zr.float()).abs().max().item(), (ct.float() - cr.float()).abs().max().item())
    dz_t, dc_t = K.correction_list_triton(x, g1, g2, csr)
    dz_r, dc_r = K.correction_list_ref(x, g1, g2, csr)
    err_corr = max((dz_t.float() - dz_r.float()).abs().max().item(), (dc_t.float() - dc_r.float()).abs().max().item())

    copy_bytes = 2 * (z0.numel() + c0.numel()) * el  # the reset copies inside the corr timings
    rows_out = [
        ("masked_mix  triton", bench(lambda: K.masked_mix_triton(x, g1, g2, S)), mix_bytes),
        ("masked_mix  torch ref", bench(lambda: K.masked_mix_ref(x, g1, g2, S)), mix_bytes),
        ("corr list   triton (+reset copy)", bench(corr_triton), corr_bytes + copy_bytes),
        ("corr list   torch ref (+reset copy)", bench(corr_ref), corr_bytes + copy_bytes),
        ("reset copy alone", bench(lambda: (zc.copy_(z0), cc.copy_(c0))), copy_bytes),
    ]
    if not args.no_expansion:
        rows_out.append(("explicit expansion (masked mix)", bench(expansion), mix_bytes))

    print(f"T={T} H={H} E={E} m={m} topk={args.topk} dtype={args.dtype} edits={n_edits} "
          f"(active targets {csr.n_active}) device={torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}")
    print(f"max |triton - ref|: masked_mix {err_mix:.3g}, correction list {err_corr:.3g}")
    print(f"{'workload':38s} {'ms':>10s} {'GB moved':>10s} {'TB/s':>8s} {'of 4.3':>8s}")
    for name, ms, nbytes in rows_out:
        bw = nbytes / (ms * 1e-3)
        print(f"{name:38s} {ms:10.3f} {nbytes / 1e9:10.3f} {bw / 1e12:8.3f} {bw / PEAK_BYTES_PER_S:8.1%}")
    flops = 2 * T * H * E * E * (m + 1)
    ms_mix = rows_out[0][1]
    print(f"masked_mix triton: {flops / 1e9:.1f} GFLOP -> {flops / (ms_mix * 1e-3) / 1e12:.1f} TFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
