"""Masked-routing kernels for MONET (installed as ``monet_interp.kernels``).

Two families, each a Triton kernel with a plain-torch reference of the same signature:

* correction list (cost ~ number of edited experts K):
  ``build_edit_csr(rows, cols, ops, values, head_mask, per_head, E, direction) -> EditCSR``
  (cache it), ``edit_correction(x, g1, g2, csr, *, out=None, backend="auto") -> (dz, dc)``,
  references ``edit_deltas``, ``apply_corrections``, ``correction_list_ref``;
  Triton ``correction_list_triton``.
* mask-GEMM (cost independent of the number of edits):
  ``masked_mix(x, g1, g2, S, *, backend="auto") -> (z, c)``, reference ``masked_mix_ref``,
  Triton ``masked_mix_triton``; ``unedited_mix_ref`` is the stock MONET formula.

Importing this package does not import Triton kernel modules: ``correction_list_triton`` and
``masked_mix_triton`` (and the modules ``correction_list``/``mask_gemm``) load on first
access, so TRITON_INTERPRET can still be set (``dispatch.use_interpreter()``) after
``import monet_interp.kernels``. See dispatch.py for the backend rules.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any


def _hand_over_to_installed_kernels() -> bool:
    """Give a top-level ``import kernels`` the installed package of that name, if there is one.

    This folder is ``monet_interp.kernels``. It is imported as top-level ``kernels`` only when the
    checkout's root is on ``sys.path`` (``python -m pytest`` or a notebook started there), and then
    it would shadow Hugging Face's ``kernels`` package, which ``transformers`` imports. So the
    installed one is imported with the root left off the path and put in ``sys.modules``; the
    import system returns that module. Returns whether one was found.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    this_folder = sys.modules.pop("kernels")
    saved_path = list(sys.path)
    sys.path[:] = [entry for entry in sys.path
                   if not (isinstance(entry, str) and os.path.abspath(entry or os.curdir) == root)]
    try:
        installed = importlib.import_module("kernels")
    except ModuleNotFoundError as error:
        if error.name != "kernels":
            raise
        installed = None
    finally:
        sys.path[:] = saved_path
    sys.modules["kernels"] = this_folder if installed is None else installed
    return installed is not None


if not (__name__ == "kernels" and _hand_over_to_installed_kernels()):
    from .dispatch import (
        Backend,
        block_size,
        edit_correction,
        masked_mix,
        next_pow2,
        triton_available,
        use_interpreter,
    )
    from .reference import (
        DIRECTIONS,
        OP_ADD,
        OP_NAMES,
        OP_SCALE,
        OP_SET,
        Direction,
        EditCSR,
        apply_corrections,
        build_edit_csr,
        correction_list_ref,
        edit_deltas,
        masked_mix_ref,
        unedited_mix_ref,
    )

_LAZY = {
    "correction_list_triton": "correction_list",
    "masked_mix_triton": "mask_gemm",
}

__all__ = [
    "Backend", "DIRECTIONS", "Direction", "EditCSR", "OP_ADD", "OP_NAMES", "OP_SCALE", "OP_SET",
    "apply_corrections", "block_size", "build_edit_csr", "edit_correction",
    "correction_list_ref", "correction_list_triton", "edit_deltas", "masked_mix",
    "masked_mix_ref", "masked_mix_triton", "next_pow2", "triton_available", "unedited_mix_ref",
    "use_interpreter",
]


def __getattr__(name: str) -> Any:
    # Resolved at every access (not cached in globals) so that a module reloaded by
    # use_interpreter() is picked up.
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
