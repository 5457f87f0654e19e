"""Expert editing for MONET without expanding the E^2 routing weights.

    from monet_interp import ExpertEdit
    edits = [ExpertEdit(3, 17, "prune", group=0), ExpertEdit(5, 5, "scale", 0.5, layer=2, heads=[1])]
    with model.edit_experts(edits):
        logits = model(tokens)
    attribution = expert_attribution(model, tokens)  # [n_groups, E, E]: dLoss/dScale for every expert

spec.py: ExpertEdit / EditSet (plain data, JSON, validation); plan.py: per-layer plans;
engine.py: the edited mixes (correction list, sparse and dense mask-GEMM; torch or Triton);
context.py: edit_experts / run_with_edits; attribution.py: expert_attribution;
interventions.py / router_steering.py: steering interventions (ExpertBoost, Top1Replace, AddVector,
RouterLogitSteer) as context managers for generation.

The edit data types import eagerly (no torch, no TransformerLens); the rest loads on first use.
"""

from importlib import import_module

from monet_interp.editing.spec import (
    ALL_GROUPS,
    OPS,
    EditError,
    EditSet,
    ExpertEdit,
    check_edits,
    edits_from_json,
    edits_to_json,
    normalize_edits,
)

_LAZY = {
    "expert_attribution": "monet_interp.editing.attribution",
    "active_edits": "monet_interp.editing.context",
    "edit_experts": "monet_interp.editing.context",
    "run_with_edits": "monet_interp.editing.context",
    "LayerEdit": "monet_interp.editing.engine",
    "kernels_available": "monet_interp.editing.engine",
    "masked_mix_torch": "monet_interp.editing.engine",
    "EditPlan": "monet_interp.editing.plan",
    "LayerPlan": "monet_interp.editing.plan",
    "compile_plan": "monet_interp.editing.plan",
    "AddVector": "monet_interp.editing.interventions",
    "ExpertBoost": "monet_interp.editing.interventions",
    "Intervention": "monet_interp.editing.interventions",
    "Top1Replace": "monet_interp.editing.interventions",
    "replace_top1": "monet_interp.editing.interventions",
    "RouterLogitSteer": "monet_interp.editing.router_steering",
    "force_router_logits": "monet_interp.editing.router_steering",
}

__all__ = [
    "ALL_GROUPS", "OPS", "EditError", "EditSet", "ExpertEdit", "check_edits", "edits_from_json", "edits_to_json",
    "normalize_edits", *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'monet_interp.editing' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
