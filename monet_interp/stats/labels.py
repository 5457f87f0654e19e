"""Per-label statistics of unit sets over token windows, in one forward pass per batch.

    from monet_interp.stats import label_statistics
    stats = label_statistics(model, units, {"python": windows_py, "english": windows_en})
    stats.mean                     # float64 [labels, n_units]: mean activation per input position
    stats.freq                     # float64 [labels, n_units]: share of positions where a unit fires
    stats.active_mean              # mean activation where it fires (unit sets with dense activations)

Any unit set of the Unit protocol (``monet_interp.units``: hook names, ``accumulate``) works, and
several unit sets share the forward passes (``units`` a list: the result is a list too). Every
position of the given windows is counted (pass ``windows[:, :-1]`` for next-token windows
[n, seq + 1]). The corpus-wide counterpart with top-k contexts, document maxima and token classes
is :func:`monet_interp.stats.compute_unit_stats`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Int


@dataclass
class LabelStatistics:
    """Per-label statistics of one unit set: ``tokens`` [L] positions counted; ``mean``,
    ``freq`` and ``active_mean`` (None when the unit set gives no active sums) float64 [L, N]."""

    labels: list[str]
    tokens: list[int]
    mean: torch.Tensor
    freq: torch.Tensor
    active_mean: torch.Tensor | None = None

    def index(self, label: str) -> int:
        return self.labels.index(label)

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "freq": self.freq}


def _add(total: dict[str, torch.Tensor] | None, part: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return dict(part) if total is None else {k: total[k] + v for k, v in part.items()}


@torch.no_grad()
def _sums(model: Any, unit_sets: Sequence[Any], inputs: torch.Tensor, batch_size: int
          ) -> tuple[list[dict[str, torch.Tensor]], int]:
    names = list(dict.fromkeys(n for u in unit_sets for n in u.hook_names))
    stops = [u.stop_at_layer for u in unit_sets]
    stop = None if any(s is None for s in stops) else max(stops)
    captured: dict[str, torch.Tensor] = {}

    def grab(tensor: torch.Tensor, hook: Any) -> None:
        captured[hook.name] = tensor

    totals: list[dict[str, torch.Tensor] | None] = [None] * len(unit_sets)
    count = 0
    device = model.device
    with model.hooks(fwd_hooks=[(n, grab) for n in names]):
        for start in range(0, len(inputs), batch_size):
            batch = inputs[start:start + batch_size]
            count += batch.numel()
            captured.clear()
            model(batch.to(device), stop_at_layer=stop)
            for k, units in enumerate(unit_sets):
                totals[k] = _add(totals[k], units.accumulate(captured))
    if any(t is None for t in totals):  # no inputs
        return [{key: torch.zeros(u.n_units, dtype=torch.float64) for key in ("sum", "fires")} for u in unit_sets], count
    return [{key: value.cpu() for key, value in t.items()} for t in totals], count


def window_statistics(model: Any, units: Any, inputs: Int[torch.Tensor, "n seq"], batch_size: int = 16) -> Any:
    """{"mean", "freq"[, "active_mean"]} float64 [n_units] of ``units`` over every position of
    ``inputs`` (a list of such dicts for a list of unit sets)."""
    unit_sets = list(units) if isinstance(units, Sequence) else [units]
    sums, count = _sums(model, unit_sets, inputs, batch_size)
    n = max(count, 1)
    out = []
    for s in sums:
        row = {"mean": s["sum"] / n, "freq": s["fires"] / n}
        if "active_sum" in s:
            row["active_mean"] = s["active_sum"] / s["fires"].clamp_min(1)
        out.append(row)
    return out if isinstance(units, Sequence) else out[0]


def label_statistics(model: Any, units: Any, windows: Mapping[str, Int[torch.Tensor, "n seq"]],
                     batch_size: int = 16) -> Any:
    """:class:`LabelStatistics` of ``units`` over each label's windows (every position counted);
    a list of them, one per unit set, when ``units`` is a list."""
    unit_sets = list(units) if isinstance(units, Sequence) else [units]
    labels = list(windows)
    per_label = []
    tokens = []
    for lab in labels:
        per_label.append(window_statistics(model, unit_sets, windows[lab], batch_size))
        tokens.append(int(windows[lab].numel()))
    out = []
    for k in range(len(unit_sets)):
        rows = [p[k] for p in per_label]
        has_active = bool(rows) and all("active_mean" in r for r in rows)
        active = torch.stack([r["active_mean"] for r in rows]) if has_active else None
        out.append(LabelStatistics(labels, tokens, torch.stack([r["mean"] for r in rows]),
                                   torch.stack([r["freq"] for r in rows]), active))
    return out if isinstance(units, Sequence) else out[0]


__all__ = ["LabelStatistics", "label_statistics", "window_statistics"]
