"""Turn expert edits on for a block of code: ``with model.edit_experts(edits): ...``.

The edits act on every forward pass inside the block (``model(...)``, ``generate``,
``run_with_cache``, ``run_with_hooks``): each edited layer's ``MonetMoE.expert_edit`` seam holds a
LayerEdit until the block exits, normally or by an exception. Routing hooks compose with edits
because ``hook_g_row`` / ``hook_g_col`` run before the mix: an edit acts on the factors the hooks
return. Layers without edits keep the stock mix (bit-identical to an unedited model).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from monet_interp.editing.engine import LayerEdit
from monet_interp.editing.plan import EditPlan, compile_plan
from monet_interp.editing.spec import EditError


@contextmanager
def edit_experts(model: Any, edits: Any, backend: str = "auto", path: str = "auto") -> Iterator[EditPlan]:
    """Apply ``edits`` (ExpertEdit, list, EditSet, ...) to ``model`` inside the with-block.

    backend: "auto" (Triton kernels on CUDA without autograd, else torch), "torch" or "triton".
    path: "auto", "list", "sparse" or "dense" (see monet_interp.editing.engine).
    Yields the compiled EditPlan. Edits are validated against ``model.cfg`` before anything is
    attached. Contexts may nest only on disjoint layers (combine edits into one list instead).
    """
    plan = compile_plan(edits, model.cfg)
    seams = {layer: LayerEdit(layer_plan, backend, path) for layer, layer_plan in plan.layers.items()}
    busy = [layer for layer in seams if model.blocks[layer].moe.expert_edit is not None]
    if busy:
        raise EditError(f"layers {busy} already have expert edits attached (nested edit_experts on the same "
                        f"layers); pass all edits to one edit_experts call")
    attached: list[int] = []
    try:
        for layer, seam in seams.items():
            model.blocks[layer].moe.expert_edit = seam
            attached.append(layer)
        yield plan
    finally:
        for layer in attached:
            if model.blocks[layer].moe.expert_edit is seams[layer]:
                model.blocks[layer].moe.expert_edit = None


def run_with_edits(model: Any, inputs: Any, edits: Any, backend: str = "auto", path: str = "auto",
                   **forward_kwargs: Any) -> Any:
    """``model(inputs, **forward_kwargs)`` with ``edits`` active (and removed afterwards)."""
    with edit_experts(model, edits, backend=backend, path=path):
        return model(inputs, **forward_kwargs)


def active_edits(model: Any) -> dict[int, LayerEdit]:
    """The LayerEdit attached to each layer right now (empty outside edit_experts)."""
    return {layer: block.moe.expert_edit for layer, block in enumerate(model.blocks)
            if block.moe.expert_edit is not None}
