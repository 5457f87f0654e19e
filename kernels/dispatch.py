"""Backend selection for the masked-routing kernels, and small helpers.

Nothing in this module imports Triton at import time. The Triton kernel modules
(`correction_list`, `mask_gemm`) are imported lazily by :func:`triton_module`, because
Triton decides between the compiler and the CPU interpreter when a ``@triton.jit``
function is *defined*: ``TRITON_INTERPRET=1`` has to be in the environment before those
modules are imported, and also before ``triton.language`` itself is first imported (its
own helpers such as ``tl.zeros`` are jit functions). ``import monet_interp`` can import
triton through torch._dynamo, so on CPU set the variable at process start (or in a root
conftest.py). :func:`use_interpreter` sets it, re-imports kernel modules that were already
imported in compiled mode, and raises if ``triton.language`` was imported too early
(:func:`interpreter_usable`).

Backends
--------
``"auto"``   Triton when every tensor argument is on CUDA and Triton is importable,
             else the torch reference.
``"triton"`` always Triton (on CPU this needs the interpreter, see :func:`use_interpreter`).
``"torch"``  always the torch reference.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from .reference import EditCSR, correction_list_ref, masked_mix_ref

Backend = Literal["auto", "triton", "torch"]

#: Kernel modules that define ``@triton.jit`` functions (imported lazily).
KERNEL_MODULES: tuple[str, ...] = ("correction_list", "mask_gemm")

_TRUE = {"1", "true", "on", "yes"}


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1)."""
    n = int(n)
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def block_size(n: int, minimum: int = 1, maximum: int | None = None) -> int:
    """Power-of-two block covering n, at least ``minimum`` (e.g. 16 for tl.dot operands)
    and at most ``maximum`` (callers then loop over blocks)."""
    b = max(next_pow2(n), next_pow2(minimum))
    if maximum is not None:
        b = min(b, next_pow2(maximum))
    return b


def interpreter_requested() -> bool:
    """True when TRITON_INTERPRET is set to a true value in the environment (read live)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in _TRUE


def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - triton is a hard dependency
        return False
    return True


def triton_available() -> bool:
    """Whether the Triton kernels can run in this process: a CUDA device is present, or
    the interpreter is requested (CPU)."""
    if not triton_importable():
        return False
    return torch.cuda.is_available() or interpreter_requested()


def _qualname(module: str) -> str:
    return f"{__package__}.{module}" if __package__ else module


def triton_module(name: str) -> ModuleType:
    """Import (once) and return a kernel module, e.g. ``triton_module("mask_gemm")``."""
    if name not in KERNEL_MODULES:
        raise ValueError(f"unknown kernel module {name!r}; expected one of {KERNEL_MODULES}")
    return importlib.import_module(_qualname(name))


def interpreter_usable() -> bool:
    """Whether Triton kernels can run under the interpreter in this process.

    Triton creates its own ``triton.language`` helpers (``tl.zeros``, reductions, ...) as
    compiled or interpreted functions when ``triton.language`` is first imported, so the
    interpreter only works if TRITON_INTERPRET=1 was set before that import. Note that
    importing torch._dynamo (which ``import monet_interp`` may do) imports triton.
    """
    tl_mod = sys.modules.get("triton.language")
    if tl_mod is None:
        return True  # nothing imported yet: use_interpreter() can still set the variable
    from triton.runtime.jit import JITFunction

    probe = getattr(tl_mod, "zeros", None)
    # A compiled-mode JITFunction here means triton.language was imported without the flag.
    return not isinstance(probe, JITFunction)


def use_interpreter() -> None:
    """Run the Triton kernels with the CPU interpreter from now on in this process.

    Sets ``TRITON_INTERPRET=1`` and reloads this package's kernel modules if they were
    imported with compiled kernels. Raises RuntimeError when ``triton.language`` was already
    imported in compiled mode (see :func:`interpreter_usable`): then set TRITON_INTERPRET=1
    before anything imports triton (process start, or a root conftest.py), or run the work in
    a subprocess. Idempotent. The public wrappers look kernels up in their module at call
    time, so they pick up reloaded ones.
    """
    if not interpreter_usable():
        raise RuntimeError(
            "triton.language was imported before TRITON_INTERPRET=1 was set, so the Triton "
            "interpreter cannot be enabled in this process; set TRITON_INTERPRET=1 before "
            "importing torch._dynamo / triton / monet_interp, or use a subprocess"
        )
    os.environ["TRITON_INTERPRET"] = "1"
    for name in KERNEL_MODULES:
        mod = sys.modules.get(_qualname(name))
        if mod is not None and not getattr(mod, "INTERPRETED", False):
            importlib.reload(mod)


def on_cuda(*tensors: torch.Tensor | None) -> bool:
    ts = [t for t in tensors if t is not None]
    return bool(ts) and all(t.is_cuda for t in ts)


def use_triton(backend: Backend, *tensors: torch.Tensor | None) -> bool:
    """Decide whether a call runs the Triton kernel (True) or the torch reference (False)."""
    if backend == "torch":
        return False
    if backend == "triton":
        if not triton_importable():
            raise RuntimeError("backend='triton' requested but triton is not importable")
        if not on_cuda(*tensors) and not interpreter_requested():
            raise RuntimeError(
                "backend='triton' on CPU tensors needs the Triton interpreter: call "
                "monet_interp.kernels.dispatch.use_interpreter() (or set TRITON_INTERPRET=1 "
                "before the kernel modules are imported)"
            )
        return True
    if backend == "auto":
        return on_cuda(*tensors) and triton_importable()
    raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")


# --------------------------------------------------------------------------------------
# Dispatching entry points (Triton on CUDA, torch reference elsewhere, unless forced)
# --------------------------------------------------------------------------------------


def masked_mix(
    x: Float[Tensor, "T E m"],
    g1: Float[Tensor, "T H E"],
    g2: Float[Tensor, "T H E"],
    S: Float[Tensor, "E E"] | Float[Tensor, "H E E"],
    *,
    backend: Backend = "auto",
) -> tuple[Float[Tensor, "T E m"], Float[Tensor, "T E"]]:
    """Mix under a dense multiplier S; see ``reference.masked_mix_ref`` for the semantics."""
    if use_triton(backend, x, g1, g2, S):
        return triton_module("mask_gemm").masked_mix_triton(x, g1, g2, S)
    return masked_mix_ref(x, g1, g2, S)


def edit_correction(
    x: Float[Tensor, "T E m"],
    g1: Float[Tensor, "T H E"],
    g2: Float[Tensor, "T H E"],
    csr: EditCSR,
    *,
    out: tuple[Float[Tensor, "T E m"], Float[Tensor, "T E"]] | None = None,
    backend: Backend = "auto",
) -> tuple[Float[Tensor, "T E m"], Float[Tensor, "T E"]]:
    """Correction of the mix for an edit list; see ``reference.correction_list_ref``.

    (Not called ``correction_list``: that name is the kernel submodule's.)

    An empty list returns zeros (or ``out`` untouched) without importing or launching Triton.
    """
    if csr.K == 0:
        return correction_list_ref(x, g1, g2, csr, out=out)
    if use_triton(backend, x, g1, g2):
        return triton_module("correction_list").correction_list_triton(x, g1, g2, csr, out=out)
    return correction_list_ref(x, g1, g2, csr, out=out)
