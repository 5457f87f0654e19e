"""Steering interventions: context managers that stay active during ``model.generate``.

    from monet_interp.editing.interventions import ExpertBoost
    boost = ExpertBoost([(0, 12, 40), (1, 3, 7)], op="add")   # (group, i, j)
    with boost.context(model, alpha=2.0):
        text = model.generate("def main():", max_new_tokens=40)

``ExpertBoost``  raise the weight of chosen experts with the edit API (ExpertEdit "add"/"set").
``Top1Replace``  in a top-1 routed model, move chosen heads' routing mass to a target expert
                 (hooks on ``hook_g_row`` / ``hook_g_col``; :func:`replace_top1` is the pure part).
``AddVector``    x += alpha * v at named hooks (DiffMean, SAE decoder directions).
``RouterLogitSteer`` (:mod:`monet_interp.editing.router_steering`): force router logits before
                 routing (SteerMoE).

Every intervention is bound to its units and takes alpha at ``context(model, alpha)``; alpha = 0
is "no intervention" (also for "set", which would otherwise prune).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor


class Intervention:
    """A steering method bound to its chosen units; ``context(model, alpha)`` applies it.

    Subclasses give the forward hooks that apply it (:meth:`hooks`); alpha = 0 attaches nothing."""

    method = "base"

    def hooks(self, model: Any, alpha: float) -> list[tuple[str, Callable]]:
        raise NotImplementedError

    def context(self, model: Any, alpha: float) -> contextlib.AbstractContextManager:
        if alpha == 0:
            return contextlib.nullcontext()
        return model.hooks(fwd_hooks=self.hooks(model, alpha))

    def describe(self) -> dict[str, Any]:
        return {"method": self.method}


# ExpertBoost ops and Top1Replace gates
BOOST_OPS = ("add", "set")
TOP1_GATES = ("keep", "set")


class ExpertBoost(Intervention):
    """Raise the weight of chosen MONET experts with ExpertEdit "add"/"set".

    experts: (group, i, j) triples (every layer of the routing group), or with ``layers`` the
    edits are scoped to those layers instead (each (group, i, j) applied to the layers of
    ``layers`` that belong to its group). heads: None (the summed weight s) or a list of heads
    (each head's w_h). alpha: "add" adds alpha, "set" sets alpha; alpha = 0 attaches nothing.
    """

    method = "monet"

    def __init__(self, experts: Sequence[tuple[int, int, int]], op: str = "add", heads: Sequence[int] | None = None,
                 layers: Sequence[int] | None = None, scores: Sequence[float] | None = None) -> None:
        if op not in BOOST_OPS:
            raise ValueError(f"expert steering uses op 'add' or 'set', got {op!r}")
        self.experts = [(int(g), int(i), int(j)) for g, i, j in experts]
        self.op, self.heads = op, (None if heads is None else [int(h) for h in heads])
        self.layers = None if layers is None else [int(l) for l in layers]
        self.scores = None if scores is None else [float(s) for s in scores]

    def edits(self, cfg: Any, alpha: float) -> list[Any]:
        from monet_interp.editing import ExpertEdit

        out = []
        for g, i, j in self.experts:
            if self.layers is None:
                out.append(ExpertEdit(i, j, self.op, float(alpha), group=g, heads=self.heads))
            else:
                for layer in self.layers:
                    if cfg.group_of_layer(layer) == g:
                        out.append(ExpertEdit(i, j, self.op, float(alpha), layer=layer, heads=self.heads))
        return out

    def context(self, model: Any, alpha: float) -> contextlib.AbstractContextManager:
        if alpha == 0 or not self.experts:
            return contextlib.nullcontext()
        return model.edit_experts(self.edits(model.cfg, alpha))

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "op": self.op, "heads": self.heads, "layers": self.layers,
                "experts": [{"group": g, "i": i, "j": j, **({"score": s} if self.scores else {})}
                            for (g, i, j), s in zip(self.experts, self.scores or [None] * len(self.experts))]}


def replace_top1(g: Tensor, targets: Mapping[int, int], value: Tensor | float | None = None,
                 scale: float = 1.0) -> Tensor:
    """Move each listed head's routing mass to one target index: a new tensor, ``g`` untouched.

    g: [..., head, expert] routing factors (g_row or g_col). For head h -> index t in ``targets``
    the head's row becomes zero except entry t, which gets ``value`` (a float or a tensor
    broadcastable to g[..., h]) or, when value is None, ``scale`` times the head's total
    (in a top-1 model the single chosen gate value). Other heads are returned unchanged.
    """
    out = g.clone()
    for head, index in targets.items():
        if value is None:
            new = g[..., head, :].sum(-1) * scale
        else:
            new = torch.as_tensor(value, dtype=g.dtype, device=g.device).expand(g.shape[:-2])
        out[..., head, :] = 0
        out[..., head, index] = new
    return out


class Top1Replace(Intervention):
    """Replace the expert chosen by listed heads with a target expert, on the layers of a group.

    targets: {group: {head: (i, j)}}. gate="keep": the new expert's weight is alpha times the
    weight the head gave its own choice (g_row scaled by alpha, g_col kept); gate="set": the weight
    is alpha (g_row := alpha, g_col := 1). layers: restrict to these layers (default every layer
    of each group). alpha = 0 attaches nothing.
    """

    method = "top1"

    def __init__(self, targets: Mapping[int, Mapping[int, tuple[int, int]]], gate: str = "keep",
                 layers: Sequence[int] | None = None, scores: Mapping[int, Mapping[int, float]] | None = None) -> None:
        if gate not in TOP1_GATES:
            raise ValueError(f"gate must be 'keep' or 'set', got {gate!r}")
        self.targets = {int(g): {int(h): (int(i), int(j)) for h, (i, j) in heads.items()} for g, heads in targets.items()}
        self.gate = gate
        self.layers = None if layers is None else [int(l) for l in layers]
        self.scores = scores

    def hooks(self, model: Any, alpha: float) -> list[tuple[str, Callable]]:
        out: list[tuple[str, Callable]] = []
        for group, heads in self.targets.items():
            rows = {h: ij[0] for h, ij in heads.items()}
            cols = {h: ij[1] for h, ij in heads.items()}
            if self.gate == "keep":
                row_kw: dict[str, Any] = {"scale": float(alpha)}
                col_kw: dict[str, Any] = {"scale": 1.0}
            else:
                row_kw, col_kw = {"value": float(alpha)}, {"value": 1.0}

            def row_hook(g, hook, rows=rows, kw=row_kw):
                return replace_top1(g, rows, **kw)

            def col_hook(g, hook, cols=cols, kw=col_kw):
                return replace_top1(g, cols, **kw)

            for layer in model.cfg.layers_of_group(group):
                if self.layers is not None and layer not in self.layers:
                    continue
                out.append((f"blocks.{layer}.moe.hook_g_row", row_hook))
                out.append((f"blocks.{layer}.moe.hook_g_col", col_hook))
        return out

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "gate": self.gate, "layers": self.layers,
                "targets": [{"group": g, "head": h, "i": i, "j": j,
                             **({"score": float(self.scores[g][h])} if self.scores else {})}
                            for g, heads in self.targets.items() for h, (i, j) in heads.items()]}


class AddVector(Intervention):
    """x += alpha * v at each named hook (DiffMean, SAE decoder directions)."""

    method = "vector"

    def __init__(self, vectors: Mapping[str, Tensor], info: dict[str, Any] | None = None,
                 method: str | None = None) -> None:
        self.vectors = {name: v.detach().clone() for name, v in vectors.items()}
        self.info = info or {}
        if method is not None:
            self.method = method

    def hooks(self, model: Any, alpha: float) -> list[tuple[str, Callable]]:
        def make(vector: Tensor) -> Callable:
            def hook(x, hook):
                return x + float(alpha) * vector.to(device=x.device, dtype=x.dtype)
            return hook

        return [(name, make(v)) for name, v in self.vectors.items()]

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "hooks": {n: float(v.norm()) for n, v in self.vectors.items()}, **self.info}


__all__ = ["BOOST_OPS", "TOP1_GATES", "AddVector", "ExpertBoost", "Intervention", "Top1Replace", "replace_top1"]
