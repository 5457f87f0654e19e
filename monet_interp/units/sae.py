"""SAE features as units, following the fair-SAE rules (evals.md):

- keep the error term: at the hook, x' = x + sum_k (f'_k - f_k) W_dec[k], i.e. Dec(f') + (x - Dec(f)),
  computed as the change alone so that an empty edit returns x bit for bit;
- remove a feature by negative clamping: where the feature is active (f_k > 0) it is set to
  ``clamp * mu_k``, mu_k its mean activation where active on the training activations
  (``clamp=0`` is zero-ablation, which is often ineffective; Farrell et al. 2024);
- always measure against the clean model: ``mode="spliced"`` replaces x by Dec(f') (the
  reconstruction spliced in, even with nothing removed) to show what splicing alone costs.

An SAE is any module with ``encode``, ``decode``, ``W_dec`` [d_sae, d] and a linear decoder
Dec(f) = f W_dec + b_dec (SAELens SAEs are; nothing here imports SAELens). Training SAEs is an
analysis (``monet_interp.analyses.baselines.train_saes``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float

from monet_interp.units.base import HookUnits, Unit, UnitError, as_units, model_name

SAE_HOOK = "blocks.{layer}.hook_mlp_out"
SAE_MODES = ("error", "spliced")


def flat_features(act: torch.Tensor) -> Float[torch.Tensor, "batch pos features"]:
    """[batch, pos, *feature dims] -> [batch, pos, prod(feature dims)] (SAELens flattens heads/experts)."""
    return act.flatten(2) if act.dim() > 3 else act


@dataclass
class SAEBank:
    """One SAE per layer at ``hook_template`` of ``model``.

    saes: {layer: SAE}. mean_active: {layer: [d_sae]} mean activation of each feature where it is
    active (0 for dead features). fvu: {layer: fraction of variance unexplained} on held-out
    activations. l0: {layer: mean active features per token}.
    """

    model: Any
    saes: dict[int, Any]
    mean_active: dict[int, torch.Tensor]
    hook_template: str = SAE_HOOK
    fvu: dict[int, float] = field(default_factory=dict)
    l0: dict[int, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return sorted(self.saes)

    def d_sae(self, layer: int) -> int:
        return int(self.saes[layer].W_dec.shape[0])


def sae_features(hook_name: str, encode: Callable[[torch.Tensor], torch.Tensor], n_features: int,
                 name: str | None = None) -> HookUnits:
    """SAE features read only: ``encode`` maps the hook's activation [batch, pos, d] to [batch, pos, n]."""
    return HookUnits(hook_name, n_features, transform=encode, name=name or f"SAE features @ {hook_name}",
                     kind="feature")


def splice_sae(model: Any, sae: Any, hook_name: str, error_term: bool = False,
               edit: Any = None) -> contextlib.AbstractContextManager:
    """Context manager: run ``model`` with ``sae`` at ``hook_name``.

    error_term=False: the reconstruction Dec(f') replaces the activation (f = Enc(x), f' =
    edit(f) or f). error_term=True: the SAE's error is kept, x' = x + Dec(f') - Dec(f) (SAELens'
    use_error_term), so without an edit the model is unchanged bit for bit. Activations with
    several trailing axes ([batch, pos, expert, m]) are flattened for the SAE and restored.
    edit: f -> f' on [batch, pos, d_sae] feature activations."""
    if hook_name not in model.hook_dict:
        raise ValueError(f"{type(model).__name__} has no hook {hook_name!r}")

    def hook(x: torch.Tensor, hook: Any) -> torch.Tensor:
        flat = flat_features(x)
        f = sae.encode(flat.to(sae.W_dec.dtype))
        new = edit(f) if edit is not None else f
        if error_term:
            out = flat + (sae.decode(new) - sae.decode(f)).to(flat.dtype)
        else:
            out = sae.decode(new).to(flat.dtype)
        return out.reshape(x.shape)

    return model.hooks(fwd_hooks=[(hook_name, hook)])


class SAEUnits(Unit):
    """SAE features of an :class:`SAEBank` as removable units.

    Flat unit id = slot * d_sae + feature (slot indexing ``bank.layers``; every SAE the same width).
    mode "error" (default): x' = x + sum_k (f'_k - f_k) W_dec[k] (error term kept); "spliced":
    x' = Dec(f') (the reconstruction replaces x at every layer of the bank, even with nothing
    removed). clamp: value of a removed feature where it is active, in units of its mean active
    value mu_k (negative clamping; 0 = zero-ablation). A feature fires when it is positive.
    """

    kind = "feature"

    def __init__(self, bank: SAEBank, mode: str = "error", clamp: float = -2.0, name: str | None = None):
        if mode not in SAE_MODES:
            raise UnitError(f"mode must be one of {SAE_MODES}, got {mode!r}")
        self.bank, self.model, self.mode, self.clamp = bank, bank.model, mode, float(clamp)
        self.layers = bank.layers
        widths = {bank.d_sae(x) for x in self.layers}
        if len(widths) != 1:
            raise UnitError(f"every SAE of the bank must have the same width, got {sorted(widths)}")
        self.width = widths.pop()
        self.n_units = len(self.layers) * self.width
        self.hook_names = tuple(bank.hook_template.format(layer=x) for x in self.layers)
        tag = "error kept" if mode == "error" else "spliced"
        self.name = name or f"SAE features of {model_name(self.model)} ({tag})"

    def _split(self, units: Any) -> dict[int, torch.Tensor]:
        units = as_units(units)
        slot, feat = units // self.width, units % self.width
        return {self.layers[s]: feat[slot == s] for s in slot.unique().tolist()}

    def intervention(self, layer: int, features: Any):
        """The hook function editing ``features`` of ``layer`` (see the class docstring)."""
        sae = self.bank.saes[layer]
        idx = as_units(features)
        value = self.clamp * self.bank.mean_active[layer][idx]
        mode = self.mode

        def hook(x: torch.Tensor, hook: Any) -> torch.Tensor:
            flat = flat_features(x)
            f = sae.encode(flat)
            f_sel = f[..., idx]
            new = torch.where(f_sel > 0, value.to(f.dtype).expand_as(f_sel), f_sel)
            if mode == "error":
                return (flat + ((new - f_sel) @ sae.W_dec[idx]).to(x.dtype)).reshape(x.shape)
            f = f.clone()
            f[..., idx] = new
            return sae.decode(f).to(x.dtype).reshape(x.shape)

        return hook

    def hooks(self, units: Any) -> list[tuple[str, Any]]:
        """Forward hooks for removing ``units``; in spliced mode every layer of the bank is hooked."""
        per_layer = self._split(units)
        layers = self.layers if self.mode == "spliced" else sorted(per_layer)
        empty = torch.zeros(0, dtype=torch.long)
        return [(self.bank.hook_template.format(layer=x), self.intervention(x, per_layer.get(x, empty)))
                for x in layers]

    def removal(self, units: Any) -> contextlib.AbstractContextManager:
        units = as_units(units)
        if units.numel() == 0 and self.mode == "error":
            return contextlib.nullcontext()
        return self.model.hooks(fwd_hooks=self.hooks(units))

    def describe(self, units: Any) -> pd.DataFrame:
        units = as_units(units)
        return pd.DataFrame({"unit": units.tolist(), "layer": [self.layers[s] for s in (units // self.width).tolist()],
                             "feature": (units % self.width).tolist()})

    def info(self) -> dict[str, Any]:
        return dict(super().info(), mode=self.mode, clamp=self.clamp, layers=self.layers, width=self.width,
                    fvu=self.bank.fvu, l0=self.bank.l0, training=self.bank.info)

    def _encode(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        flat = flat_features(x.detach())
        return self.bank.saes[layer].encode(flat.reshape(-1, flat.shape[-1]))

    def activations(self, captured: dict[str, torch.Tensor]) -> torch.Tensor:
        out = [self._encode(x, captured[n]).reshape(*captured[n].shape[:2], -1)
               for x, n in zip(self.layers, self.hook_names)]
        return out[0] if len(out) == 1 else torch.cat(out, -1)


__all__ = ["SAEBank", "SAEUnits", "SAE_HOOK", "SAE_MODES", "flat_features", "sae_features", "splice_sae"]
