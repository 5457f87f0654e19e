"""UnitStats: activation statistics of N units over L labels and D documents (numpy arrays), from
:func:`monet_interp.stats.compute_unit_stats` or, for one routing group's experts, a view of
:class:`monet_interp.stats.RoutingStats` (:func:`unit_stats_from_routing`). The analyses in
``monet_interp.analyses.monosemanticity`` take UnitStats, whatever the unit set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monet_interp.stats.storage import SavedStats
from monet_interp.stats.stream import StatsError
from monet_interp.stats.topk import contexts_frame


def share_over_labels(mean: np.ndarray) -> np.ndarray:
    """``mean`` [L, ...] divided by its sum over labels (axis 0); NaN where that sum is 0 (units
    never active)."""
    total = mean.sum(0, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, mean / np.where(total > 0, total, 1), np.nan)


@dataclass
class UnitStats(SavedStats):
    """Activation statistics of N units over L labels and D documents (numpy arrays).

    Fields:
        name, kind: the unit set ("dense L1 neurons", "neuron"; "MONET group 0 experts", "expert").
        labels, label_kinds; tokens int64 [L] (counted tokens per label).
        act_sum float64 [L, N]; fire_count int64 [L, N] (activation > fire_threshold).
        doc_label int32 [D], doc_index int64 [D], doc_length int64 [D]  (as in RoutingStats).
        doc_max float32 [D, N] or None: max activation over each document's counted tokens.
        topk_score float32 [N, k], topk_key int64 [N, k]: top contexts (key = doc << 24 | pos).
        unit_names: list[str] or None. For experts, unit u is flat expert id i*E + j and
            metadata has "n_experts" and "group".
        class_names, class_tokens [C], class_act_sum float64 [C, N], class_fire_count [C, N].
        sample_key [S], sample_class [S], sample_label [S], sample_act float32 [S, N]: a
            deterministic token sample with full activation vectors (token-level detection).
    """

    name: str
    kind: str
    labels: list[str]
    label_kinds: list[str]
    tokens: np.ndarray
    act_sum: np.ndarray
    fire_count: np.ndarray
    fire_threshold: float
    doc_label: np.ndarray
    doc_index: np.ndarray
    doc_length: np.ndarray
    doc_max: np.ndarray | None = None
    topk_score: np.ndarray | None = None
    topk_key: np.ndarray | None = None
    unit_names: list[str] | None = None
    class_names: list[str] | None = None
    class_tokens: np.ndarray | None = None
    class_act_sum: np.ndarray | None = None
    class_fire_count: np.ndarray | None = None
    sample_key: np.ndarray | None = None
    sample_class: np.ndarray | None = None
    sample_label: np.ndarray | None = None
    sample_act: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def n_units(self) -> int:
        return int(self.act_sum.shape[1])

    @property
    def n_docs(self) -> int:
        return len(self.doc_label)


    def mean_activation(self) -> np.ndarray:
        """[L, N] mean activation per label (per token)."""
        return self.act_sum / np.maximum(self.tokens, 1)[:, None]

    def profile(self) -> np.ndarray:
        """[L, N] mean activation normalised over labels (NaN for units never active)."""
        return share_over_labels(self.mean_activation())

    def frequency(self) -> np.ndarray:
        """[L, N] share of each label's tokens with activation > fire_threshold."""
        return self.fire_count / np.maximum(self.tokens, 1)[:, None]

    def class_mean(self) -> np.ndarray | None:
        """[C, N] mean activation per token class (None without a classifier)."""
        if self.class_act_sum is None:
            return None
        return self.class_act_sum / np.maximum(self.class_tokens, 1)[:, None]

    def unit_label(self, unit: int) -> str:
        if self.unit_names is not None:
            return self.unit_names[unit]
        if self.kind == "expert" and "n_experts" in self.metadata:
            i, j = divmod(int(unit), int(self.metadata["n_experts"]))
            return f"g{self.metadata.get('group', 0)}:({i},{j})"
        return str(unit)

    def top_contexts(self, unit: int):
        """DataFrame of the unit's top contexts: rank, score, label, doc, pos, doc_global."""
        if self.topk_score is None:
            raise StatsError("no top-k contexts were collected (top_k=0)")
        return contexts_frame(self.topk_score[unit], self.topk_key[unit], self.labels, self.doc_label,
                              self.doc_index)

    _KIND = "unit_stats"
    _ARRAYS = ("tokens", "act_sum", "fire_count", "doc_label", "doc_index", "doc_length", "doc_max", "topk_score",
               "topk_key", "class_tokens", "class_act_sum", "class_fire_count", "sample_key", "sample_class",
               "sample_label", "sample_act")
    _SCALARS = ("name", "kind", "labels", "label_kinds", "fire_threshold", "unit_names", "class_names")



def unit_stats_from_routing(rs: Any, group: int) -> UnitStats:
    """UnitStats view of one routing group's E^2 experts (unit = flat id i*E + j). Activation =
    routing score; doc_max / token classes / sample are present when the RoutingStats has them."""
    if not 0 <= group < rs.n_groups:
        raise StatsError(f"group {group} out of range [0, {rs.n_groups})")
    L, EE = len(rs.labels), rs.n_experts ** 2
    C = len(rs.class_names) if rs.class_names is not None else 0
    has_sample = rs.sample_key is not None
    return UnitStats(
        name=f"MONET group {group} experts", kind="expert", labels=list(rs.labels), label_kinds=list(rs.label_kinds),
        tokens=rs.tokens, act_sum=rs.score_sum[:, group].reshape(L, EE),
        fire_count=rs.fire_count[:, group].reshape(L, EE), fire_threshold=rs.fire_threshold,
        doc_label=rs.doc_label, doc_index=rs.doc_index, doc_length=rs.doc_length,
        doc_max=rs.doc_max[group] if rs.doc_max is not None else None,
        topk_score=rs.topk_score[group], topk_key=rs.topk_key[group], unit_names=None,
        class_names=rs.class_names, class_tokens=rs.class_tokens,
        class_act_sum=rs.class_score_sum[:, group].reshape(C, EE) if C else None,
        class_fire_count=rs.class_fire_count[:, group].reshape(C, EE) if C else None,
        sample_key=rs.sample_key, sample_class=rs.sample_class, sample_label=rs.sample_label,
        sample_act=rs.sample_scores(group) if has_sample else None,
        metadata=dict(rs.metadata, group=group, n_experts=rs.n_experts, layers=rs.group_layers[group]),
    )


__all__ = ["UnitStats", "share_over_labels", "unit_stats_from_routing"]
