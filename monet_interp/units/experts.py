"""MONET experts (i, j) as units: read from the routing factors g1 (``hook_g_row``) and g2
(``hook_g_col``), removed exactly through the edit API (``ExpertEdit(i, j, "prune")``).

scope: "group" (unit = expert (i, j) of a routing group, pruned on every layer of the group, which
all share its routing; default) or "layer" (unit = expert (i, j) of one layer). heads: "all" (the
head-summed weight sum_h g1[h,i] g2[h,j]; default) or "per-head" (unit = one head's weight
g1[h,i] g2[h,j]). groups / layers restrict the units to some routing groups / layers; experts
restricts them to some flat expert ids i*E + j (or (i, j) pairs) of each slot. Flat unit id =
((slot * H_units) + h) * n_selected + k, slot indexing the selected groups or layers, H_units = H
per head else 1, k indexing the selected experts (= i*E + j when all E^2 are selected).

Statistics: mean routing score and firing frequency (share of tokens whose score exceeds
``fire_threshold``), computed without forming [tokens, E, E]: the firing counts enumerate only the
routed pairs of every (token, head) (:func:`count_fires`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

from monet_interp.units.base import Unit, UnitError, as_units, model_name

SCOPES = ("group", "layer")
HEAD_MODES = ("all", "per-head")
CHUNK_ELEMENTS = 1 << 22


class ExpertUnits(Unit):
    """MONET experts as units (see the module docstring). ``model``: a HookedMONET, or only its
    config when the units are just read (statistics), not removed."""

    kind = "expert"

    def __init__(self, model: Any, scope: str = "group", heads: str = "all", groups: Sequence[int] | None = None,
                 layers: Sequence[int] | None = None, fire_threshold: float = 0.0, name: str | None = None,
                 experts: Sequence[int | tuple[int, int]] | None = None):
        cfg = getattr(model, "cfg", model)
        if not hasattr(cfg, "moe_experts"):
            raise UnitError(f"{type(model).__name__} has no experts (ExpertUnits needs a HookedMONET)")
        if scope not in SCOPES:
            raise UnitError(f"scope must be one of {SCOPES}, got {scope!r}")
        if heads not in HEAD_MODES:
            raise UnitError(f"heads must be one of {HEAD_MODES}, got {heads!r}")
        self.model = model if model is not cfg else None
        self.scope, self.heads = scope, heads
        self.E, self.H = cfg.moe_experts, cfg.moe_heads
        self.fire_threshold = float(fire_threshold)
        if scope == "group":
            if layers is not None:
                raise UnitError("layers= restricts scope='layer'; with scope='group' use groups=")
            self.slots = list(range(cfg.num_routers)) if groups is None else [int(g) for g in groups]
            for g in self.slots:
                if not 0 <= g < cfg.num_routers:
                    raise UnitError(f"routing group {g} does not exist ({cfg.num_routers} groups)")
            self.slot_layers = [cfg.layers_of_group(g)[0] for g in self.slots]
        else:
            chosen = list(range(cfg.num_hidden_layers)) if layers is None else [int(x) for x in layers]
            if groups is not None:
                keep = {int(g) for g in groups}
                chosen = [x for x in chosen if cfg.group_of_layer(x) in keep]
            for x in chosen:
                if not 0 <= x < cfg.num_hidden_layers:
                    raise UnitError(f"layer {x} does not exist ({cfg.num_hidden_layers} layers)")
            self.slots = chosen
            self.slot_layers = list(chosen)
        if not self.slots:
            raise UnitError("no routing group or layer selected")
        EE = self.E * self.E
        if experts is None:
            self.flat = np.arange(EE)
        else:
            self.flat = np.array([e[0] * self.E + e[1] if isinstance(e, (tuple, list)) else int(e) for e in experts],
                                 dtype=np.int64)
            if self.flat.size and (self.flat.min() < 0 or self.flat.max() >= EE):
                raise UnitError(f"expert ids must be in [0, {EE})")
        self.all_experts = experts is None
        self.n_selected = len(self.flat)
        self.h_units = self.H if heads == "per-head" else 1
        self.per_slot = self.h_units * self.n_selected
        self.n_units = len(self.slots) * self.per_slot
        self.hook_names = tuple(n for layer in self.slot_layers
                                for n in (f"blocks.{layer}.moe.hook_g_row", f"blocks.{layer}.moe.hook_g_col"))
        scope_txt = "" if (scope, heads) == ("group", "all") else f" [{scope}, {heads} heads]"
        self.name = name or f"{model_name(self.model) if self.model is not None else 'MONET'} experts{scope_txt}"
        self._idx: torch.Tensor | None = None

    # ---------------------------------------------------------------- ids
    def unravel(self, units: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(slot, head (or -1), i, j) of flat unit ids."""
        units = as_units(units)
        slot = units // self.per_slot
        rest = units % self.per_slot
        head = rest // self.n_selected if self.heads == "per-head" else torch.full_like(rest, -1)
        pair = torch.as_tensor(self.flat)[rest % self.n_selected]
        return slot, head, pair // self.E, pair % self.E

    def edits(self, units: Any, op: str = "prune", value: float | None = None) -> list:
        """The ExpertEdits (prunes by default) acting on ``units`` (per-head units of one expert
        share an edit)."""
        from monet_interp.editing import ExpertEdit

        slot, head, i, j = (t.tolist() for t in self.unravel(units))
        grouped: dict[tuple[int, int, int], list[int]] = {}
        for s, h, a, b in zip(slot, head, i, j):
            grouped.setdefault((s, a, b), []).append(h)
        out = []
        for (s, a, b), hs in sorted(grouped.items()):
            where = {"group": self.slots[s]} if self.scope == "group" else {"layer": self.slots[s]}
            heads = None if self.heads == "all" else sorted(set(hs))
            out.append(ExpertEdit(a, b, op, value, heads=heads, **where))
        return out

    def removal(self, units: Any) -> contextlib.AbstractContextManager:
        units = as_units(units)
        if units.numel() == 0:
            return contextlib.nullcontext()
        return self.model.edit_experts(self.edits(units))

    def scaling(self, units: Any, factor: float) -> contextlib.AbstractContextManager:
        units = as_units(units)
        if units.numel() == 0:
            return contextlib.nullcontext()
        return self.model.edit_experts(self.edits(units, "scale", float(factor)))

    # ---------------------------------------------------------------- naming
    def unit_names(self) -> list[str]:
        slot, head, i, j = (t.tolist() for t in self.unravel(torch.arange(self.n_units)))
        where = "g" if self.scope == "group" else "L"
        return [f"{where}{self.slots[s]}:({a},{b})" + (f"h{h}" if h >= 0 else "")
                for s, h, a, b in zip(slot, head, i, j)]

    def describe(self, units: Any) -> pd.DataFrame:
        slot, head, i, j = self.unravel(units)
        where = "group" if self.scope == "group" else "layer"
        frame = pd.DataFrame({"unit": as_units(units).tolist(),
                              where: [self.slots[s] for s in slot.tolist()], "i": i.tolist(), "j": j.tolist(),
                              "flat_id": (i * self.E + j).tolist()})
        if self.heads == "per-head":
            frame.insert(2, "head", head.tolist())
        return frame

    def info(self) -> dict[str, Any]:
        out = dict(super().info(), scope=self.scope, heads=self.heads, slots=self.slots, E=self.E, H=self.H)
        if not self.all_experts:
            out["experts"] = self.flat.tolist()
        return out

    def stats_metadata(self) -> dict[str, Any]:
        """What UnitStats records of these units: E and the group, for one group's experts."""
        if self.scope == "group" and self.heads == "all" and len(self.slots) == 1:
            return {"n_experts": self.E, "group": self.slots[0]}
        return {}

    # ---------------------------------------------------------------- reading
    def _pairs(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._idx is None or self._idx.device != device:
            self._idx = torch.as_tensor(self.flat, device=device)
        return torch.div(self._idx, self.E, rounding_mode="floor"), self._idx % self.E

    def activations(self, captured: dict[str, torch.Tensor]) -> Float[torch.Tensor, "batch pos n_units"]:
        out = []
        for layer in self.slot_layers:
            g1 = captured[f"blocks.{layer}.moe.hook_g_row"].float()
            g2 = captured[f"blocks.{layer}.moe.hook_g_col"].float()
            if self.all_experts:
                spec = "bphi,bphj->bpij" if self.heads == "all" else "bphi,bphj->bphij"
                out.append(torch.einsum(spec, g1, g2).flatten(2))
            else:
                i, j = self._pairs(g1.device)
                w = g1[..., i] * g2[..., j]  # [batch, pos, head, k]
                out.append(w.sum(-2) if self.heads == "all" else w.flatten(2))
        return out[0] if len(out) == 1 else torch.cat(out, -1)

    def accumulate(self, captured: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Summed scores and firing counts, sparse (nothing of size [tokens, E, E] is formed)."""
        if not self.all_experts:
            return super().accumulate(captured)
        E, H = self.E, self.H
        device = captured[f"blocks.{self.slot_layers[0]}.moe.hook_g_row"].device
        score = torch.zeros(len(self.slots), self.h_units, E, E, dtype=torch.float64, device=device)
        fires = torch.zeros_like(score)
        for slot, layer in enumerate(self.slot_layers):
            g1 = captured[f"blocks.{layer}.moe.hook_g_row"].detach().reshape(-1, H, E).double()
            g2 = captured[f"blocks.{layer}.moe.hook_g_col"].detach().reshape(-1, H, E).double()
            if self.heads == "per-head":
                score[slot] += torch.einsum("thi,thj->hij", g1, g2)
                fires[slot] += count_fires(g1, g2, self.fire_threshold, per_head=True)
            else:
                score[slot, 0] += torch.einsum("thi,thj->ij", g1, g2)
                fires[slot, 0] += count_fires(g1, g2, self.fire_threshold, per_head=False)
        return {"sum": score.flatten(), "fires": fires.flatten()}


def monet_experts(cfg: Any, group: int, experts: Sequence[int | tuple[int, int]] | None = None) -> ExpertUnits:
    """Experts (i, j) of one routing group, activation = routing score sum_h g1[h,i] g2[h,j], for
    the streaming statistics (``experts``: flat ids or (i, j) pairs; None = all E^2: only sensible
    for small E, as activations are [tokens, E^2]; for all experts of a large model use
    ``monet_interp.stats.compute_routing_stats``)."""
    return ExpertUnits(cfg, groups=[group], experts=experts, name=f"MONET group {group} experts")


def count_fires(g1: Float[torch.Tensor, "tok head expert"], g2: Float[torch.Tensor, "tok head expert"],
                threshold: float, per_head: bool) -> torch.Tensor:
    """Tokens whose score exceeds ``threshold``: [H, E, E] per head (score g1[h,i] g2[h,j]) or
    [E, E] for the head-summed score. Enumerates only the routed pairs of every (token, head)
    (k1 * k2 of them), so nothing of size [tokens, E, E] is formed."""
    n_tok, n_heads, n_exp = g1.shape
    e2 = n_exp * n_exp
    size = n_heads * e2 if per_head else e2
    out = torch.zeros(size, dtype=torch.float64, device=g1.device)
    if n_tok == 0:
        return out.view(n_heads, n_exp, n_exp) if per_head else out.view(n_exp, n_exp)
    k1 = max(1, int((g1 != 0).sum(-1).max()))
    k2 = max(1, int((g2 != 0).sum(-1).max()))
    step = max(1, CHUNK_ELEMENTS // (n_heads * k1 * k2 * 4))
    for s in range(0, n_tok, step):
        v1, i1 = g1[s:s + step].topk(k1, dim=-1)  # [t, H, k1]
        v2, j2 = g2[s:s + step].topk(k2, dim=-1)  # [t, H, k2]
        w = v1[..., :, None] * v2[..., None, :]  # [t, H, k1, k2]
        pair = i1[..., :, None] * n_exp + j2[..., None, :]
        if per_head:
            key = pair + (torch.arange(n_heads, device=g1.device) * e2)[None, :, None, None]
            fired = key[w > threshold]
        else:  # sum over heads per (token, pair) first, then threshold
            t = torch.arange(pair.shape[0], device=g1.device)[:, None, None, None]
            key = (t * e2 + pair).flatten()
            uniq, inverse = torch.unique(key, return_inverse=True)
            score = torch.zeros(len(uniq), dtype=w.dtype, device=w.device).index_add_(0, inverse, w.flatten())
            fired = uniq[score > threshold] % e2
        out += torch.bincount(fired, minlength=size).double()
    return out.view(n_heads, n_exp, n_exp) if per_head else out.view(n_exp, n_exp)


__all__ = ["HEAD_MODES", "SCOPES", "ExpertUnits", "count_fires", "monet_experts"]
