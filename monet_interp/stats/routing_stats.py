"""RoutingStats: the routing statistics of every expert of every routing group over a labelled
token stream (computed by :func:`monet_interp.stats.compute_routing_stats`, saved and loaded with
their model and corpus fingerprints).

    stats.mean_score()                 # [label, group, E, E]  r_e(D)
    stats.top_contexts(0, i, j)        # DataFrame: rank, score, label, doc, pos
    stats.units(group=0)               # one group's experts as UnitStats
    stats.save("runs/stats"); RoutingStats.load("runs/stats", model=model, corpus=corpus)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monet_interp.stats.storage import SavedStats
from monet_interp.stats.stream import StatsError
from monet_interp.stats.topk import contexts_frame
from monet_interp.stats.unit_stats import UnitStats, share_over_labels, unit_stats_from_routing

HIST_LOW = 1e-4  # first histogram edge above 0
HIST_BINS = 64


@dataclass
class RoutingStats(SavedStats):
    """Routing statistics of every expert of every routing group over a labelled token stream.

    Axes: L labels, G routing groups (one per router; a group's layers share its routing), H
    routing heads, E halves per axis (expert (i, j), flat id i*E + j), D documents, k top-k slots.
    All arrays are numpy (on CPU).

    Fields:
        labels, label_kinds: label names and their kinds ("code" / "natural").
        tokens: int64 [L]            tokens counted per label (bos/eos excluded by default).
        score_sum: float64 [L,G,E,E] sum over the label's tokens of s_e(t).
        fire_count: int64 [L,G,E,E]  tokens with s_e(t) > fire_threshold.
        head_score_sum: float64 [G,H,E,E] sum over all tokens of g1[t,h,i] g2[t,h,j].
        hist_edges: float64 [B+1]    score histogram edges: 0, then log-spaced 1e-4 .. H.
        hist_count: int64 [L,G,B]    (token, expert) pairs with score in each bin (score > 0 only;
                                     pairs with score 0: tokens*E^2 - hist_count.sum(-1)).
        topk_score: float32 [G,E*E,k], topk_key: int64 [G,E*E,k]  top-k contexts per expert,
                                     sorted by score desc then key asc; empty slots -inf / -1.
                                     key = doc << 24 | pos (see ``top_contexts``).
        doc_label: int32 [D], doc_index: int64 [D], doc_length: int64 [D]  the documents used
                                     (global id d; doc_index = position in corpus.documents).
        fire_threshold, top_k, seq_len, split: settings.
        doc_max: float32 [G,D,E*E] or None   max over each document's tokens of s_e(t) (opt-in).
        class_names / class_tokens [C] / class_score_sum [C,G,E,E] / class_fire_count [C,G,E,E]:
                                     per token class (e.g. Pygments types), when a classifier ran.
        sample_key [S], sample_class [S], sample_label [S]: a deterministic token sample;
        sample_row/_group/_expert/_score [M]: its nonzero scores (sparse; see ``sample_scores``).
        metadata: model, corpus fingerprint, settings, timing.
    """

    labels: list[str]
    label_kinds: list[str]
    n_groups: int
    n_heads: int
    n_experts: int
    group_layers: list[list[int]]
    tokens: np.ndarray
    score_sum: np.ndarray
    fire_count: np.ndarray
    head_score_sum: np.ndarray
    hist_edges: np.ndarray
    hist_count: np.ndarray
    topk_score: np.ndarray
    topk_key: np.ndarray
    doc_label: np.ndarray
    doc_index: np.ndarray
    doc_length: np.ndarray
    fire_threshold: float
    top_k: int
    seq_len: int
    split: str
    doc_max: np.ndarray | None = None
    class_names: list[str] | None = None
    class_tokens: np.ndarray | None = None
    class_score_sum: np.ndarray | None = None
    class_fire_count: np.ndarray | None = None
    sample_key: np.ndarray | None = None
    sample_class: np.ndarray | None = None
    sample_label: np.ndarray | None = None
    sample_row: np.ndarray | None = None
    sample_group: np.ndarray | None = None
    sample_expert: np.ndarray | None = None
    sample_score: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ indexing helpers

    def expert_id(self, i: int, j: int) -> int:
        return int(i) * self.n_experts + int(j)

    def expert_ij(self, e: int) -> tuple[int, int]:
        return divmod(int(e), self.n_experts)

    @property
    def n_docs(self) -> int:
        return len(self.doc_label)

    @property
    def total_tokens(self) -> int:
        return int(self.tokens.sum())

    # ------------------------------------------------------------------ derived statistics
    def mean_score(self) -> np.ndarray:
        """r_e(D): [L, G, E, E] mean routing score per label (per token; 0 for an empty label)."""
        return self.score_sum / np.maximum(self.tokens, 1)[:, None, None, None]

    def overall_mean_score(self) -> np.ndarray:
        """[G, E, E] mean score over all counted tokens (token-weighted across labels)."""
        return self.score_sum.sum(0) / max(self.total_tokens, 1)

    def profile(self) -> np.ndarray:
        """q_e(D) = r_e(D) / sum_D' r_e(D'): [L, G, E, E]; NaN for experts never routed."""
        return share_over_labels(self.mean_score())

    def frequency(self) -> np.ndarray:
        """[L, G, E, E] share of the label's tokens with s_e(t) > fire_threshold."""
        return self.fire_count / np.maximum(self.tokens, 1)[:, None, None, None]

    def head_mean_score(self) -> np.ndarray:
        """[G, H, E, E] per-head mean of g1[h,i] g2[h,j] over all counted tokens."""
        return self.head_score_sum / max(self.total_tokens, 1)

    def class_mean_score(self) -> np.ndarray | None:
        """[C, G, E, E] mean score per token class (None without a classifier)."""
        if self.class_score_sum is None:
            return None
        return self.class_score_sum / np.maximum(self.class_tokens, 1)[:, None, None, None]

    def histogram(self, group: int | None = None, label: str | int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(edges [B+1], counts [B]) of positive scores, summed over the unspecified axes."""
        h = self.hist_count
        h = h[self.label_index(label)][None] if label is not None else h
        h = h[:, group][:, None] if group is not None else h
        return self.hist_edges, h.sum((0, 1))

    def top_contexts(self, group: int, i: int, j: int | None = None):
        """Top-k contexts of expert (i, j) of ``group`` (or flat id i when j is None) as a
        DataFrame: rank, score, label, doc (index into corpus.documents(label, split)), pos
        (position in that document's token array, bos = 0), doc_global."""
        e = int(i) if j is None else self.expert_id(i, j)
        return contexts_frame(self.topk_score[group, e], self.topk_key[group, e], self.labels,
                              self.doc_label, self.doc_index)

    def sample_scores(self, group: int) -> np.ndarray:
        """[S, E*E] float32 dense scores of the sampled tokens in one group (zeros elsewhere)."""
        if self.sample_key is None:
            raise StatsError("no token sample: compute with token_sample > 0")
        out = np.zeros((len(self.sample_key), self.n_experts ** 2), dtype=np.float32)
        m = self.sample_group == group
        out[self.sample_row[m], self.sample_expert[m]] = self.sample_score[m]
        return out

    def units(self, group: int) -> UnitStats:
        """This group's experts as a generic :class:`monet_interp.stats.unit_stats.UnitStats`
        (units = flat expert ids i*E + j), for the monosemanticity analyses."""
        return unit_stats_from_routing(self, group)

    # ------------------------------------------------------------------ save / load
    _KIND = "routing_stats"
    _ARRAYS = ("tokens", "score_sum", "fire_count", "head_score_sum", "hist_edges", "hist_count", "topk_score",
               "topk_key", "doc_label", "doc_index", "doc_length", "doc_max", "class_tokens", "class_score_sum",
               "class_fire_count", "sample_key", "sample_class", "sample_label", "sample_row", "sample_group",
               "sample_expert", "sample_score")
    _SCALARS = ("labels", "label_kinds", "n_groups", "n_heads", "n_experts", "group_layers", "fire_threshold", "top_k",
                "seq_len", "split", "class_names")


__all__ = ["HIST_BINS", "HIST_LOW", "RoutingStats"]
