"""The Unit protocol: a set of units (MONET experts, dense-MLP neurons, SAE features, ...) that
can be read from hook points, measured per label and removed or scaled.

A unit set says

- which hooks to read (``hook_names``; the forward may stop at ``stop_at_layer``) and how to turn
  the captured tensors into activations [batch, pos, n_units] (:meth:`Unit.activations`), or
  directly into per-unit sums and firing counts (:meth:`Unit.accumulate`, which a unit set with
  too many units for dense activations, e.g. all E^2 experts, computes sparsely);
- how to remove some of its units from ``model`` (:meth:`Unit.removal`, a context manager) and,
  where it is natural, scale them (:meth:`Unit.scaling`);
- how to name them (:meth:`Unit.describe`: one row per unit id; :meth:`Unit.unit_names`) and
  itself (:meth:`Unit.info`).

Unit ids are flat int64 ids in [0, n_units). The streaming statistics
(``monet_interp.stats.compute_unit_stats`` over a corpus, ``monet_interp.stats.label_statistics``
over token windows) read any unit set through this protocol.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float, Int

_LAYER = re.compile(r"^blocks\.(\d+)\.")


class UnitError(ValueError):
    """A unit set that does not fit its model, or bad unit-set arguments."""


def model_name(model: Any) -> str:
    """The checkpoint folder's name, else the class name without "Hooked"."""
    path = getattr(model, "checkpoint_path", None)
    if path:
        return Path(str(path)).name
    return type(model).__name__.replace("Hooked", "")


def as_units(units: Any) -> Int[torch.Tensor, "n"]:
    return torch.as_tensor(units, dtype=torch.long)


class Unit:
    """Base class of unit sets (see the module docstring).

    Subclasses set ``name``, ``kind`` ("expert", "neuron", "feature", ...), ``n_units``,
    ``hook_names`` and ``model`` (None for a unit set that only reads activations), and implement
    :meth:`activations` (or :meth:`accumulate`); removable unit sets implement :meth:`removal`.
    ``fire_threshold``: a unit fires on a token when its activation exceeds it.
    """

    model: Any = None
    name: str = "units"
    kind: str = "unit"
    n_units: int = 0
    hook_names: tuple[str, ...] = ()
    fire_threshold: float = 0.0

    @property
    def stop_at_layer(self) -> int | None:
        """One past the deepest ``blocks.{l}.`` hook (None: a hook outside the blocks)."""
        layers = [int(m.group(1)) for m in map(_LAYER.match, self.hook_names) if m]
        if len(layers) != len(self.hook_names):
            return None
        return max(layers) + 1

    # ---------------------------------------------------------------- reading
    def activations(self, captured: dict[str, torch.Tensor]) -> Float[torch.Tensor, "batch pos n_units"]:
        """[batch, pos, n_units] activations from the captured hook tensors (by hook name)."""
        raise NotImplementedError

    def accumulate(self, captured: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-unit float64 sums over every captured position, on the captured tensors' device:
        {"sum": activation, "fires": tokens with activation > fire_threshold, "active_sum":
        activation where it fires}."""
        acts = self.activations(captured)
        flat = acts.reshape(-1, acts.shape[-1]).double()
        fired = flat > self.fire_threshold
        return {"sum": flat.sum(0), "fires": fired.sum(0).double(), "active_sum": (flat * fired).sum(0)}

    def stats_metadata(self) -> dict[str, Any]:
        """Extra metadata of :func:`monet_interp.stats.compute_unit_stats` (JSON-friendly)."""
        return {}

    # ---------------------------------------------------------------- editing
    def removal(self, units: Any) -> contextlib.AbstractContextManager:
        """Context manager removing ``units`` (int64 flat unit ids) from ``self.model``."""
        raise NotImplementedError(f"{type(self).__name__} units cannot be removed")

    def scaling(self, units: Any, factor: float) -> contextlib.AbstractContextManager:
        """Context manager multiplying the contribution of ``units`` by ``factor``."""
        raise NotImplementedError(f"{type(self).__name__} units cannot be scaled")

    # ---------------------------------------------------------------- naming
    def unit_names(self) -> list[str] | None:
        return None

    def describe(self, units: Any) -> pd.DataFrame:
        """One row per unit id, naming it."""
        return pd.DataFrame({"unit": as_units(units).tolist()})

    def info(self) -> dict[str, Any]:
        """name, kind, n_units and what else identifies the unit set (JSON-friendly)."""
        return {"name": self.name, "kind": self.kind, "n_units": self.n_units}


class HookUnits(Unit):
    """Units = the last axes of one hook's activation, optionally after ``transform`` (e.g. an SAE
    encoder mapping [batch, pos, d] to features [batch, pos, n]). Trailing axes are flattened.
    Without a transform the units can be removed (zeroed at the hook) and scaled, given ``model``."""

    def __init__(self, hook_name: str, n_units: int, *, transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 name: str | None = None, kind: str = "unit", unit_names: Sequence[str] | None = None,
                 model: Any = None, fire_threshold: float = 0.0):
        self.hook_names = (hook_name,)
        self.n_units = int(n_units)
        self.transform = transform
        self.name = name or hook_name
        self.kind = kind
        self.model = model
        self.fire_threshold = float(fire_threshold)
        self._names = list(unit_names) if unit_names is not None else None

    def activations(self, captured: dict[str, torch.Tensor]) -> torch.Tensor:
        x = captured[self.hook_names[0]]
        if self.transform is not None:
            x = self.transform(x)
        x = x.reshape(*x.shape[:2], -1)
        if x.shape[-1] != self.n_units:
            raise UnitError(f"{self.name}: expected {self.n_units} units, the hook gives {x.shape[-1]}")
        return x

    def unit_names(self) -> list[str] | None:
        return self._names

    def scaling(self, units: Any, factor: float) -> contextlib.AbstractContextManager:
        if self.transform is not None or self.model is None:
            return super().scaling(units, factor)
        idx = as_units(units)

        def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
            flat = act.reshape(*act.shape[:2], -1)
            scaled = flat.index_copy(-1, idx.to(act.device), flat[..., idx.to(act.device)] * factor)
            return scaled.reshape(act.shape)

        return self.model.hooks(fwd_hooks=[(self.hook_names[0], hook)])

    def removal(self, units: Any) -> contextlib.AbstractContextManager:
        if as_units(units).numel() == 0:
            return contextlib.nullcontext()
        return self.scaling(units, 0.0)


__all__ = ["HookUnits", "Unit", "UnitError", "as_units", "model_name"]
