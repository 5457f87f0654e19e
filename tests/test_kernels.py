"""Masked-routing kernels (monet_interp.kernels): Triton vs torch reference vs explicit expansion.

The explicit expansion materialises g[t,h,i,j] = g1[t,h,i] g2[t,h,j] (float64, small E and T)
and applies the edit to it; it is the specification both implementations are checked against.

TRITON_INTERPRET ordering. Triton picks compiled vs interpreted code when ``triton.language``
(and then each kernel module) is imported, and ``import monet_interp`` may import triton
through torch._dynamo. So:

* on a machine without CUDA this file sets TRITON_INTERPRET=1 before importing anything from
  monet_interp; if triton was not imported yet (this file runs first, or alone), the Triton
  tests run in this process (``dispatch.use_interpreter()`` also reloads kernel modules that
  were imported in compiled mode);
* if an earlier test module already imported triton without the variable (full-suite run),
  the in-process Triton tests are skipped and ``test_triton_tests_in_subprocess`` reruns this
  file in a fresh interpreter with TRITON_INTERPRET=1 set from the start.
  (A root conftest.py that sets TRITON_INTERPRET=1 when CUDA is absent makes this unneeded.)
"""

from __future__ import annotations

import os
import sys

import torch

_SUBPROCESS_FLAG = "MONET_KERNELS_TEST_SUBPROCESS"
if not torch.cuda.is_available() and "triton.language" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"

import ast  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from jaxtyping import TypeCheckError  # noqa: E402

import monet_interp.kernels as K  # noqa: E402
from monet_interp.kernels import dispatch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

if torch.cuda.is_available():
    TRITON_IN_PROCESS = True
    DEVICE = "cuda"
    TOL = 1e-4  # TF32-free fp32 path, but reductions differ in order
else:
    DEVICE = "cpu"
    TOL = 1e-5
    TRITON_IN_PROCESS = dispatch.interpreter_usable()
    if TRITON_IN_PROCESS:
        dispatch.use_interpreter()

needs_triton = pytest.mark.skipif(
    not TRITON_IN_PROCESS,
    reason="triton was imported before TRITON_INTERPRET=1; covered by test_triton_tests_in_subprocess",
)

FEW = settings(max_examples=6, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MANY = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---------------------------------------------------------------------------------- helpers
def sparse_softmax(T: int, H: int, E: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """Router-like factors: softmax over the k largest of random logits, exact zeros elsewhere."""
    logits = torch.randn(T, H, E, generator=gen) * 2
    k = max(1, min(k, E))
    thr = logits.topk(k, dim=-1).values[..., -1:]
    return torch.where(logits >= thr, logits, torch.full_like(logits, -torch.inf)).softmax(-1)


def make_inputs(T, H, E, m, k=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    g1 = sparse_softmax(T, H, E, k, gen)
    g2 = sparse_softmax(T, H, E, k, gen)
    x = torch.randn(T, E, m, generator=gen)
    return x, g1, g2, gen


def random_edits(g1, g2, K_, gen, *, ops=None, per_head=None):
    """K_ distinct experts, biased toward experts with routing weight (mostly active ones)."""
    T, H, E = g1.shape
    K_ = min(K_, E * E)
    score = torch.einsum("thi,thj->ij", g1, g2).flatten() + 1e-3
    if K_ > 0:
        flat = torch.multinomial(score, K_, replacement=False, generator=gen)
    else:
        flat = torch.zeros(0, dtype=torch.int64)
    rows, cols = flat // E, flat % E
    if ops is None:
        ops = torch.randint(0, 3, (K_,), generator=gen)
    ops = torch.as_tensor(ops).to(torch.int8).expand(K_).clone()
    values = torch.rand(K_, generator=gen) * 3 - 1
    values[torch.rand(K_, generator=gen) < 0.3] = 0.0  # prunes / zero targets
    head_mask = torch.rand(K_, H, generator=gen) < 0.5
    head_mask[torch.rand(K_, generator=gen) < 0.3] = True  # some all-head masks
    if per_head is None:
        per_head = torch.rand(K_, generator=gen) < 0.5
    per_head = torch.as_tensor(per_head).expand(K_).clone()
    return rows, cols, ops, values, head_mask, per_head


def expanded_weights(g1, g2, edits=None):
    """W[t,i,j] = sum_h g1 g2 from the explicit expansion, with the edit list applied (float64)."""
    G = g1.double()[:, :, :, None] * g2.double()[:, :, None, :]  # [T, H, E, E]
    W = G.sum(1)
    if edits is None:
        return W
    rows, cols, ops, values, head_mask, per_head = edits

    def op_of(o, v, w):
        return v * w if o == 0 else (torch.full_like(w, v) if o == 1 else w + v)

    W = W.clone()
    for k in range(rows.shape[0]):
        i, j, o, v = int(rows[k]), int(cols[k]), int(ops[k]), float(values[k])
        w_h = G[:, :, i, j][:, head_mask[k]]  # [T, selected heads]
        if bool(per_head[k]):
            W[:, i, j] += (op_of(o, v, w_h) - w_h).sum(1)
        else:
            s = w_h.sum(1)
            W[:, i, j] += op_of(o, v, s) - s
    return W


def contract(W, x, direction):
    """Mix with explicit weights: to_cols z[t,j] = sum_i W[t,i,j] x[t,i]; to_rows over j."""
    if direction == "to_cols":
        return torch.einsum("tij,tim->tjm", W, x.double()), W.sum(1)
    return torch.einsum("tij,tjm->tim", W, x.double()), W.sum(2)


def expected_correction(x, g1, g2, edits, direction):
    z0, c0 = contract(expanded_weights(g1, g2), x, direction)
    z1, c1 = contract(expanded_weights(g1, g2, edits), x, direction)
    return z1 - z0, c1 - c0


def expected_masked_mix(x, g1, g2, S):
    G = g1.double()[:, :, :, None] * g2.double()[:, :, None, :]
    Sd = S.double()
    W = (G * (Sd[None, None] if Sd.dim() == 2 else Sd[None])).sum(1)
    return contract(W, x, "to_cols")


def maxerr(a, b) -> float:
    return (a.double().cpu() - b.double().cpu()).abs().max().item() if a.numel() else 0.0


def check_close(got, want, tol=TOL):
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert maxerr(g, w) <= tol, maxerr(g, w)


def random_S(E, H, per_head, gen):
    shape = (H, E, E) if per_head else (E, E)
    S = torch.rand(shape, generator=gen) * 2
    S[torch.rand(shape, generator=gen) < 0.3] = 0.0
    S[torch.rand(shape, generator=gen) < 0.3] = 1.0
    return S


def to_dev(*ts):
    return tuple(t.to(DEVICE) for t in ts)


# ---------------------------------------------------------------------------------- references
def test_reference_mix_with_ones_is_unedited_formula():
    x, g1, g2, gen = make_inputs(9, 3, 20, 5, k=4)
    naive_z = torch.einsum("tim,thi,thj->tjm", x, g1, g2)
    naive_c = torch.einsum("thi,thj->tj", g1, g2)
    for S in (torch.ones(20, 20), torch.ones(3, 20, 20)):
        check_close(K.masked_mix_ref(x, g1, g2, S), (naive_z, naive_c))
    check_close(K.unedited_mix_ref(x, g1, g2), (naive_z, naive_c))
    # g1 rows are softmaxes: c is the released code's shortcut sum_h g2
    check_close((K.masked_mix_ref(x, g1, g2, torch.ones(20, 20))[1],), (g2.sum(1),))
    # and the explicit expansion
    check_close(K.masked_mix_ref(x, g1, g2, torch.ones(20, 20)), contract(expanded_weights(g1, g2), x, "to_cols"))


@MANY
@given(T=st.integers(1, 12), H=st.integers(1, 5), E=st.integers(1, 24), m=st.integers(1, 9),
       per_head=st.booleans(), k=st.integers(1, 24), seed=st.integers(0, 2**16))
def test_reference_masked_mix_vs_expansion(T, H, E, m, per_head, k, seed):
    x, g1, g2, gen = make_inputs(T, H, E, m, k, seed)
    S = random_S(E, H, per_head, gen)
    check_close(K.masked_mix_ref(x, g1, g2, S), expected_masked_mix(x, g1, g2, S))


@MANY
@given(T=st.integers(1, 12), H=st.integers(1, 5), E=st.integers(1, 24), m=st.integers(1, 9),
       nK=st.integers(0, 30), k=st.integers(1, 24), direction=st.sampled_from(K.DIRECTIONS),
       seed=st.integers(0, 2**16))
def test_reference_correction_vs_expansion(T, H, E, m, nK, k, direction, seed):
    x, g1, g2, gen = make_inputs(T, H, E, m, k, seed)
    edits = random_edits(g1, g2, nK, gen)
    csr = K.build_edit_csr(*edits, E=E, direction=direction)
    want = expected_correction(x, g1, g2, edits, direction)
    check_close(K.correction_list_ref(x, g1, g2, csr), want)
    # the two-step form on the unsorted list gives the same
    delta = K.edit_deltas(g1, g2, *edits)
    src, tgt = (edits[0], edits[1]) if direction == "to_cols" else (edits[1], edits[0])
    check_close(K.apply_corrections(x, delta, src, tgt), want)


def test_build_edit_csr_layout_and_validation():
    E, H = 6, 2
    rows = torch.tensor([5, 0, 2, 0, 3])
    cols = torch.tensor([1, 4, 1, 1, 0])
    ops = torch.tensor([0, 1, 2, 0, 1], dtype=torch.int8)
    vals = torch.arange(5, dtype=torch.float32)
    hm = torch.ones(5, H, dtype=torch.bool)
    ph = torch.tensor([True, False, True, False, False])
    csr = K.build_edit_csr(rows, cols, ops, vals, hm, ph, E=E, direction="to_cols")
    assert csr.tgt.tolist() == [0, 1, 1, 1, 4]
    assert csr.rows.tolist() == [3, 5, 2, 0, 0]  # stable within a target
    assert csr.values.tolist() == [4.0, 0.0, 2.0, 3.0, 1.0]
    assert csr.order.tolist() == [4, 0, 2, 3, 1]
    assert csr.tgt_ptr.tolist() == [0, 1, 4, 4, 4, 5, 5]
    assert csr.active_tgt.tolist() == [0, 1, 4] and csr.active_ptr.tolist() == [0, 1, 4, 5]
    csr_r = K.build_edit_csr(rows, cols, ops, vals, hm, ph, E=E, direction="to_rows")
    assert csr_r.tgt.tolist() == [0, 0, 2, 3, 5] and csr_r.src.tolist() == [4, 1, 1, 0, 1]
    with pytest.raises(ValueError, match="more than once"):
        K.build_edit_csr(torch.tensor([1, 1]), torch.tensor([2, 2]), ops[:2], vals[:2], hm[:2], ph[:2], E=E)
    with pytest.raises(ValueError, match="lie in"):
        K.build_edit_csr(torch.tensor([6]), torch.tensor([0]), ops[:1], vals[:1], hm[:1], ph[:1], E=E)
    with pytest.raises(ValueError, match="ops"):
        K.build_edit_csr(rows[:1], cols[:1], torch.tensor([3], dtype=torch.int8), vals[:1], hm[:1], ph[:1], E=E)
    with pytest.raises((ValueError, TypeCheckError), match="direction"):  # hook or own check
        K.build_edit_csr(rows, cols, ops, vals, hm, ph, E=E, direction="sideways")


def test_dispatch_helpers():
    assert [K.next_pow2(n) for n in (0, 1, 2, 3, 6, 12, 16, 17)] == [1, 1, 2, 4, 8, 16, 16, 32]
    assert K.block_size(6, minimum=16) == 16 and K.block_size(700, maximum=128) == 128
    cpu = torch.zeros(1)
    assert dispatch.use_triton("torch", cpu) is False
    assert dispatch.use_triton("auto", cpu) is False
    with pytest.raises((ValueError, TypeCheckError)):  # the type hook catches it first
        dispatch.use_triton("gpu", cpu)
    x, g1, g2, gen = make_inputs(4, 2, 8, 3)
    S = random_S(8, 2, False, gen)
    check_close(K.masked_mix(x, g1, g2, S, backend="torch"), K.masked_mix_ref(x, g1, g2, S), 0.0)
    csr = K.build_edit_csr(*random_edits(g1, g2, 5, gen), E=8)
    check_close(K.edit_correction(x, g1, g2, csr, backend="torch"), K.correction_list_ref(x, g1, g2, csr), 0.0)


def test_package_import_is_lazy():
    """kernels/__init__, dispatch and reference never import triton or the kernel modules at
    module level (static check: it must hold whatever imported triton earlier)."""
    for name in ("__init__.py", "dispatch.py", "reference.py"):
        tree = ast.parse((ROOT / "kernels" / name).read_text())
        for node in tree.body:  # module level only
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [("." * node.level) + (node.module or "")]
            else:
                continue
            for mod in mods:
                assert "triton" not in mod and "correction_list" not in mod and "mask_gemm" not in mod, (name, mod)


def test_wrappers_are_type_checked():
    """Under the pytest jaxtyping hook the wrappers check shapes (skipped without the hook)."""
    if not hasattr(K.reference.masked_mix_ref, "__wrapped__"):
        pytest.skip("jaxtyping import hook not active")
    x, g1, g2, gen = make_inputs(4, 2, 8, 3)
    with pytest.raises(TypeCheckError):
        K.masked_mix_ref(x, g1, g2[:, :1], torch.ones(8, 8))  # H mismatch
    with pytest.raises(TypeCheckError):
        K.masked_mix_ref(x, g1, g2, torch.ones(8, 7))


def test_empty_edit_list():
    x, g1, g2, gen = make_inputs(5, 3, 10, 4)
    empty = K.build_edit_csr(torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64),
                             torch.zeros(0, dtype=torch.int8), torch.zeros(0), torch.zeros(0, 3, dtype=torch.bool),
                             torch.zeros(0, dtype=torch.bool), E=10)
    assert empty.K == 0 and empty.n_active == 0 and empty.tgt_ptr.tolist() == [0] * 11
    fns = [K.correction_list_ref, lambda *a, **k: K.edit_correction(*a, **k, backend="torch")]
    if TRITON_IN_PROCESS:
        fns += [K.correction_list_triton, lambda *a, **k: K.edit_correction(*a, **k, backend="triton")]
    for fn in fns:
        dz, dc = fn(x, g1, g2, empty)
        assert dz.shape == (5, 10, 4) and dc.shape == (5, 10) and not dz.any() and not dc.any()
        z, c = torch.randn(5, 10, 4), torch.randn(5, 10)
        z0, c0 = z.clone(), c.clone()
        rz, rc = fn(x, g1, g2, empty, out=(z, c))
        assert rz is z and rc is c and torch.equal(z, z0) and torch.equal(c, c0)  # bit-identical fast path


# ---------------------------------------------------------------------------------- Triton
@needs_triton
@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("T,H,E,m", [(20, 6, 40, 12), (5, 3, 17, 5), (32, 8, 64, 16)])
def test_masked_mix_triton(T, H, E, m, per_head):
    x, g1, g2, gen = make_inputs(T, H, E, m, k=4, seed=T + E)
    S = random_S(E, H, per_head, gen)
    got = K.masked_mix_triton(*to_dev(x, g1, g2, S))
    check_close(got, K.masked_mix_ref(x, g1, g2, S))
    check_close(got, expected_masked_mix(x, g1, g2, S))
    if per_head:  # S = 1 is the stock mix
        check_close(K.masked_mix_triton(*to_dev(x, g1, g2, torch.ones(E, E))), K.unedited_mix_ref(x, g1, g2))


@needs_triton
def test_masked_mix_triton_vd_direction_and_strides():
    """(x2, g2, g1, S^T) contracts over j toward rows; non-contiguous views are read as they are."""
    T, H, E, m = 9, 3, 24, 6
    x, g1, g2, gen = make_inputs(T, H, E, m, k=5, seed=3)
    S = random_S(E, H, True, gen)
    G = g1.double()[:, :, :, None] * g2.double()[:, :, None, :]
    W = (G * S.double()[None]).sum(1)
    want = contract(W, x, "to_rows")
    ST = S.transpose(-1, -2)  # a view: strides (E*E, 1, E)
    g1_nc = g1.transpose(1, 2).contiguous().transpose(1, 2)  # [T,H,E] with stride(E) == H
    x_nc = x.transpose(0, 1).contiguous().transpose(0, 1)
    got = K.masked_mix_triton(*to_dev(x_nc, g2, g1_nc, ST))
    check_close(got, want)
    check_close(got, K.masked_mix_ref(x, g2, g1, ST))


@needs_triton
@FEW
@given(T=st.integers(1, 24), H=st.integers(1, 7), E=st.integers(2, 32), m=st.integers(1, 13),
       nK=st.integers(1, 10), k=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_correction_list_triton_hypothesis(T, H, E, m, nK, k, seed):
    x, g1, g2, gen = make_inputs(T, H, E, m, k, seed)
    edits = random_edits(g1, g2, nK, gen)
    for direction in K.DIRECTIONS:
        csr = K.build_edit_csr(*edits, E=E, direction=direction)
        got = K.correction_list_triton(*to_dev(x, g1, g2), csr.to(DEVICE))
        check_close(got, K.correction_list_ref(x, g1, g2, csr))
        check_close(got, expected_correction(x, g1, g2, edits, direction))


@needs_triton
@pytest.mark.parametrize("direction", K.DIRECTIONS)
def test_correction_list_triton_every_op(direction):
    """Each op x (all-heads, per-head), non-power-of-two H and m, several edits per target,
    and in-place accumulation into (z, c)."""
    T, H, E, m = 19, 6, 12, 12
    x, g1, g2, gen = make_inputs(T, H, E, m, k=5, seed=11)
    rows = torch.tensor([0, 3, 5, 3, 7, 1, 2, 9, 4, 11, 6, 8])
    cols = torch.tensor([3, 3, 3, 4, 4, 0, 11, 11, 5, 5, 5, 5])
    ops = torch.tensor([0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2], dtype=torch.int8)
    per_head = torch.tensor([False, True] * 6)
    values = torch.tensor([0.0, 0.5, 0.7, -0.3, 0.25, 1.5, 2.0, 0.0, 0.0, 1.0, -0.5, 0.1])
    head_mask = torch.rand(12, H, generator=gen) < 0.5
    head_mask[0] = True
    head_mask[5] = False  # an edit on no heads: a no-op for scale, set s=0 -> value for the rest
    edits = (rows, cols, ops, values, head_mask, per_head)
    csr = K.build_edit_csr(*edits, E=E, direction=direction).to(DEVICE)
    want = expected_correction(x, g1, g2, edits, direction)
    got = K.correction_list_triton(*to_dev(x, g1, g2), csr)
    check_close(got, want)
    check_close(got, K.correction_list_ref(x, g1, g2, csr.to("cpu")))
    # in place into the unedited mix: gives the explicitly edited mix
    z, c = to_dev(*K.unedited_mix_ref(x, g1, g2)) if direction == "to_cols" else to_dev(
        *K.masked_mix_ref(x, g2, g1, torch.ones(E, E)))
    rz, rc = K.edit_correction(*to_dev(x, g1, g2), csr, out=(z, c), backend="triton")
    assert rz is z and rc is c
    check_close((z, c), contract(expanded_weights(g1, g2, edits), x, direction))


@needs_triton
def test_bf16_inputs():
    """bf16 in, bf16 out, float32 accumulation (the interpreter path casts every load to fp32)."""
    T, H, E, m = 16, 3, 32, 8
    x, g1, g2, gen = make_inputs(T, H, E, m, k=4, seed=5)
    xb, g1b, g2b = (t.bfloat16() for t in (x, g1, g2))
    S = random_S(E, H, False, gen)
    z, c = K.masked_mix_triton(*to_dev(xb, g1b, g2b, S))
    assert z.dtype == torch.bfloat16 and c.dtype == torch.bfloat16
    zr, cr = K.masked_mix_ref(xb, g1b, g2b, S)
    assert maxerr(z, zr) <= 2e-2 * max(1.0, zr.abs().max().item())
    assert maxerr(c, cr) <= 2e-2 * max(1.0, cr.abs().max().item())
    csr = K.build_edit_csr(*random_edits(g1, g2, 8, gen), E=E).to(DEVICE)
    dz, dc = K.correction_list_triton(*to_dev(xb, g1b, g2b), csr)
    assert dz.dtype == torch.bfloat16
    dzr, dcr = K.correction_list_ref(xb, g1b, g2b, csr.to("cpu"))
    assert maxerr(dz, dzr) <= 2e-2 * max(1.0, dzr.abs().max().item())
    assert maxerr(dc, dcr) <= 2e-2 * max(1.0, dcr.abs().max().item())


@needs_triton
def test_e512_smoke():
    T, H, E, m = 3, 1, 512, 4
    x, g1, g2, gen = make_inputs(T, H, E, m, k=8, seed=7)
    S = random_S(E, H, False, gen)
    got = K.masked_mix_triton(*to_dev(x, g1, g2, S))
    check_close(got, K.masked_mix_ref(x, g1, g2, S))
    check_close(got, expected_masked_mix(x, g1, g2, S))
    edits = random_edits(g1, g2, 12, gen)
    csr = K.build_edit_csr(*edits, E=E, direction="to_cols")
    got = K.correction_list_triton(*to_dev(x, g1, g2), csr.to(DEVICE))
    check_close(got, expected_correction(x, g1, g2, edits, "to_cols"))


@needs_triton
def test_kernels_are_not_wrapped_by_type_hook():
    """@typing.no_type_check keeps the jaxtyping import hook off the kernel bodies: a wrapped
    body would compile against the wrapper's globals (jaxtyping's module) on a GPU."""
    for modname, kname in (("correction_list", "_correction_list_kernel"), ("mask_gemm", "_masked_mix_kernel")):
        mod = dispatch.triton_module(modname)
        fn = getattr(mod, kname).fn
        assert not hasattr(fn, "__wrapped__")
        assert fn.__globals__["__name__"] == mod.__name__
        assert mod.INTERPRETED == (DEVICE == "cpu")


# ---------------------------------------------------------------------------------- fallback
@pytest.mark.skipif(TRITON_IN_PROCESS or os.environ.get(_SUBPROCESS_FLAG) == "1",
                    reason="Triton tests run in this process")
def test_triton_tests_in_subprocess():
    env = {**os.environ, "TRITON_INTERPRET": "1", _SUBPROCESS_FLAG: "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(Path(__file__).resolve()), "-q", "-x", "-p", "no:cacheprovider",
         "-k", "(triton or empty or e512 or bf16 or hook) and not subprocess"],
        capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary, summary
