"""Compile expert edits into per-layer plans the engine can apply.

Every edit becomes, per layer it reaches, one row k of an affine correction of the expert's
summed weight on each token t:

    delta[t, k] = sum_h coef[k, h] * g_row[t, h, i_k] * g_col[t, h, j_k] + const[k]

    op     coef[k, h] (h in the edit's heads; 0 elsewhere)   const[k]
    prune  -1                                                 0
    scale  value - 1                                          0
    set    -1                                                 n_heads_k * value
    add    0                                                  n_heads_k * value

with n_heads_k = 1 for an all-heads edit (its coef row is the same on every head) and
len(heads) for a per-head edit. The edited layer is the unedited one plus the correction
z[t, j_k] += delta[t, k] * x[t, i_k] (see engine.py). The "linear" part (coef) vanishes where the
router gave the expert no weight, the "constant" part (const, set/add only) does not.

Layers whose edit lists are identical share one LayerPlan (and its cached device tensors), so a
group-scope mask costs the same memory as a one-layer mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from monet_interp.editing.spec import ExpertEdit, check_edits

# Op codes of the Triton correction-list kernel (prune is scale 0).
KERNEL_OP_CODES = {"prune": 0, "scale": 0, "set": 1, "add": 2}


class LayerPlan:
    """The edits of one layer as tensors (master copies in float64 on the CPU; device copies cached)."""

    def __init__(self, edits: tuple[ExpertEdit, ...], n_experts: int, n_heads: int) -> None:
        self.edits = edits
        self.n_experts, self.n_heads = n_experts, n_heads
        k = len(edits)
        self.rows = torch.tensor([e.i for e in edits], dtype=torch.long)
        self.cols = torch.tensor([e.j for e in edits], dtype=torch.long)
        self.head_mask = torch.ones(k, n_heads, dtype=torch.bool)
        self.per_head = torch.zeros(k, dtype=torch.bool)
        self.ops = torch.tensor([KERNEL_OP_CODES[e.op] for e in edits], dtype=torch.int8)
        self.values = torch.tensor([0.0 if e.value is None else e.value for e in edits], dtype=torch.float64)
        for k_, e in enumerate(edits):
            if e.heads is not None:
                self.per_head[k_] = True
                self.head_mask[k_] = False
                self.head_mask[k_, list(e.heads)] = True
        n_scope = torch.where(self.per_head, self.head_mask.sum(1).double(), torch.ones(k, dtype=torch.float64))
        slope = torch.tensor([{"prune": -1.0, "scale": (e.value or 0.0) - 1.0, "set": -1.0, "add": 0.0}[e.op]
                              for e in edits], dtype=torch.float64)
        self.coef = slope[:, None] * self.head_mask.double()  # [K, H]
        is_affine = torch.tensor([e.op in ("set", "add") for e in edits], dtype=torch.bool)
        self.const = torch.where(is_affine, n_scope * self.values, torch.zeros(k, dtype=torch.float64))  # [K]
        self.linear_index = (self.coef != 0).any(1).nonzero().flatten()
        self.const_index = (self.const != 0).nonzero().flatten()
        self.head_uniform = bool((self.coef == self.coef[:, :1]).all()) if k else True
        self._cache: dict[tuple, Any] = {}

    # ------------------------------------------------------------------ sizes
    @property
    def n_edits(self) -> int:
        return len(self.edits)

    @property
    def n_linear(self) -> int:
        """Edits with a weight-proportional part (prune, scale != 1, set)."""
        return int(self.linear_index.numel())

    @property
    def n_const(self) -> int:
        """Edits with a constant part (set and add with value != 0)."""
        return int(self.const_index.numel())

    @property
    def only_linear(self) -> bool:
        """Only prune/scale (no constant term): the mask-GEMM alone is exact."""
        return self.n_const == 0

    def __repr__(self) -> str:
        return (f"LayerPlan({self.n_edits} edits: {self.n_linear} weight-proportional, {self.n_const} constant; "
                f"E={self.n_experts}, H={self.n_heads}, {'all-heads' if self.head_uniform else 'per-head'})")

    # ------------------------------------------------------------------ device tensors
    def _cached(self, key: tuple, build) -> Any:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def list_tensors(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """(rows, cols, coef [K, H], const [K]) of every edit, for the correction list."""
        return self._cached(("list", device, dtype), lambda: (
            self.rows.to(device), self.cols.to(device), self.coef.to(device, dtype), self.const.to(device, dtype)))

    def const_tensors(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """(rows, cols, const) of the edits with a constant part only."""
        idx = self.const_index
        return self._cached(("const", device, dtype), lambda: (
            self.rows[idx].to(device), self.cols[idx].to(device), self.const[idx].to(device, dtype)))

    def coef_table(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Dense table of the weight-proportional coefficients: [E, E] when every edit acts on all
        heads, else [H, E, E] (indexed [h, i, j]); 0 for unedited experts."""
        def build() -> torch.Tensor:
            e, idx = self.n_experts, self.linear_index
            if self.head_uniform:
                table = torch.zeros(e, e, dtype=torch.float64)
                table[self.rows[idx], self.cols[idx]] = self.coef[idx, 0]
            else:
                table = torch.zeros(self.n_heads, e, e, dtype=torch.float64)
                table[:, self.rows[idx], self.cols[idx]] = self.coef[idx].T
            return table.to(device, dtype)
        return self._cached(("table", device, dtype), build)

    def multiplier(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """S = 1 + coef table: the per-expert multiplier of the mask-GEMM ([E, E] or [H, E, E])."""
        return self._cached(("mult", device, dtype), lambda: self.coef_table(device, dtype) + 1)

    def kernel_tensors(self, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The edit list in the Triton correction-list kernel's encoding."""
        return self._cached(("kernel", device, dtype), lambda: {
            "rows": self.rows.to(device, torch.int32), "cols": self.cols.to(device, torch.int32),
            "ops": self.ops.to(device), "values": self.values.to(device, dtype),
            "head_mask": self.head_mask.to(device), "per_head": self.per_head.to(device)})


@dataclass
class EditPlan:
    """Edits compiled for one model: ``layers[l]`` is the LayerPlan of layer l (edited layers only)."""

    edits: list[ExpertEdit]
    layers: dict[int, LayerPlan] = field(default_factory=dict)

    def __repr__(self) -> str:
        per = ", ".join(f"{layer}: {plan.n_edits}" for layer, plan in sorted(self.layers.items()))
        return f"EditPlan({len(self.edits)} edits; edits per layer {{{per}}})"


def compile_plan(edits: Any, cfg: Any) -> EditPlan:
    """Validate edits against a MonetConfig (see spec.check_edits) and build the per-layer plans."""
    flat = check_edits(edits, cfg)
    per_layer: dict[int, list[ExpertEdit]] = {}
    for edit in flat:
        for layer in edit.layers(cfg):
            per_layer.setdefault(layer, []).append(edit)
    shared: dict[tuple[ExpertEdit, ...], LayerPlan] = {}
    plan = EditPlan(flat)
    for layer in sorted(per_layer):
        key = tuple(per_layer[layer])
        if key not in shared:
            shared[key] = LayerPlan(key, cfg.moe_experts, cfg.moe_heads)
        plan.layers[layer] = shared[key]
    return plan
