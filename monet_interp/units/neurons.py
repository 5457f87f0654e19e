"""Dense-MLP neurons as units: activations at ``blocks.{l}.mlp.hook_post`` [batch, pos, d_mlp]
(after relu2, so >= 0: the mean is also the mean absolute activation); removal zeroes a neuron's
activation, so it contributes nothing to the MLP output (selective pruning of feed-forward
neurons, Pochinkov & Schoots 2024); scaling multiplies it."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from monet_interp.units.base import Unit, UnitError, as_units, model_name

NEURON_HOOK = "blocks.{layer}.mlp.hook_post"


class NeuronUnits(Unit):
    """MLP neurons of a dense model (``hook_template`` [batch, pos, d_mlp], by default
    ``blocks.{l}.mlp.hook_post``).

    model: the model (HookedDense), or only d_mlp (an int) for units that are just read. Flat unit
    id = slot * d_mlp + neuron, slot indexing ``layers`` (default: every layer of the model)."""

    kind = "neuron"

    def __init__(self, model: Any, layers: Sequence[int] | None = None, hook_template: str = NEURON_HOOK,
                 fire_threshold: float = 0.0, name: str | None = None):
        self.model = None if isinstance(model, int) else model
        if layers is None:
            if self.model is None:
                raise UnitError("NeuronUnits of a bare width need layers=")
            layers = range(int(self.model.cfg.n_layers))
        self.layers = [int(x) for x in layers]
        self.hook_template = hook_template
        self.hook_names = tuple(hook_template.format(layer=x) for x in self.layers)
        if self.model is not None:
            unknown = [n for n in self.hook_names if n not in self.model.hook_dict]
            if unknown:
                raise UnitError(f"{type(self.model).__name__} has no hook(s) {unknown} (NeuronUnits needs a dense "
                                f"MLP model such as HookedDense)")
        self.width = int(model) if self.model is None else int(self.model.cfg.d_mlp)
        self.n_units = len(self.layers) * self.width
        self.fire_threshold = float(fire_threshold)
        self.name = name or f"{model_name(self.model)} neurons"

    def _split(self, units: Any) -> dict[int, torch.Tensor]:
        units = as_units(units)
        slot, neuron = units // self.width, units % self.width
        return {self.layers[s]: neuron[slot == s] for s in slot.unique().tolist()}

    def hooks(self, units: Any, factor: float = 0.0) -> list[tuple[str, Any]]:
        """Forward hooks zeroing ``units`` (or multiplying them by ``factor``)."""
        out = []
        for layer, idx in self._split(units).items():
            if factor == 0.0:
                def edit(act: torch.Tensor, hook: Any, idx: torch.Tensor = idx) -> torch.Tensor:
                    return act.index_fill(-1, idx.to(act.device), 0.0)
            else:
                def edit(act: torch.Tensor, hook: Any, idx: torch.Tensor = idx) -> torch.Tensor:
                    i = idx.to(act.device)
                    return act.index_copy(-1, i, act.index_select(-1, i) * factor)
            out.append((self.hook_template.format(layer=layer), edit))
        return out

    def removal(self, units: Any) -> contextlib.AbstractContextManager:
        units = as_units(units)
        if units.numel() == 0:
            return contextlib.nullcontext()
        return self.model.hooks(fwd_hooks=self.hooks(units))

    def scaling(self, units: Any, factor: float) -> contextlib.AbstractContextManager:
        units = as_units(units)
        if units.numel() == 0:
            return contextlib.nullcontext()
        return self.model.hooks(fwd_hooks=self.hooks(units, float(factor)))

    def describe(self, units: Any) -> pd.DataFrame:
        units = as_units(units)
        return pd.DataFrame({"unit": units.tolist(), "layer": [self.layers[s] for s in (units // self.width).tolist()],
                             "neuron": (units % self.width).tolist()})

    def info(self) -> dict[str, Any]:
        return dict(super().info(), layers=self.layers, width=self.width)

    def activations(self, captured: dict[str, torch.Tensor]) -> torch.Tensor:
        acts = [captured[n] for n in self.hook_names]
        return acts[0] if len(acts) == 1 else torch.cat(acts, -1)


def dense_neurons(model_or_d_mlp: Any, layer: int) -> NeuronUnits:
    """The MLP neurons of layer ``layer`` of a dense baseline (hook ``blocks.{l}.mlp.hook_post``,
    [batch, pos, d_mlp], after relu2). Pass the model (HookedDense) or d_mlp."""
    return NeuronUnits(model_or_d_mlp, layers=[layer], name=f"dense L{layer} neurons")


__all__ = ["NEURON_HOOK", "NeuronUnits", "dense_neurons"]
