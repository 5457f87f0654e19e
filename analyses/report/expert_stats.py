"""The streaming statistics pass of a report: per expert firing counts, histogram, top windows,
a uniform sample of firing tokens and co-activation with its row / column neighbours.

An accumulator (:class:`_ExpertAccumulator`) of the one corpus pass
(:func:`monet_interp.stats.corpus_pass.run_pass`, the loop :func:`monet_interp.stats.corpus_pass.stream_corpus`
runs too). It walks the report's own windows rather than the stream's batches: the windows as given
(any subset, in their order, batches that may mix labels), padded with the tokenizer's pad id under
an attention mask, the sample keys drawn in that batch order, so the report's numbers do not
depend on how the stream would have batched them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from monet_interp.analyses.report.experts import (
    DEFAULT_FINE_BINS,
    DEFAULT_FIRE_THRESHOLD,
    DEFAULT_HIST_BINS,
    DEFAULT_SAMPLE_CAP,
    DEFAULT_TOP_K,
    ExpertRef,
    check_experts,
    first_layer,
)
from monet_interp.analyses.report.windows import Window, WindowBatch, g_names, window_batches
from monet_interp.progress import progress_bar
from monet_interp.stats.corpus_pass import StreamAccumulator, run_pass


def label_summary(label_sum: np.ndarray, label_tokens: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Per-label mean scores -> MONET 2x-rule label, normalised entropy, specialisation ratio
    (``monet_interp.analyses.monosemanticity.label_metrics``, so the report agrees with the
    monosemanticity tables). ``label_sum`` [L] summed scores, ``label_tokens`` [L] counts.
    ``label`` is None unless r(D1) >= 2 r(D2) with r(D1) > 0; entropy/specialisation are None
    for an expert that never fired (and entropy is 0 with a single label)."""
    from monet_interp.analyses.monosemanticity import label_metrics, profile

    tokens = np.asarray(label_tokens, dtype=np.float64)
    means = np.where(tokens > 0, np.asarray(label_sum, dtype=np.float64) / np.maximum(tokens, 1), 0.0)
    if len(labels) >= 2:
        row = label_metrics(means[:, None], list(labels)).iloc[0]
        label, top, entropy, spec = row["label"], row["top_label"], row["entropy"], row["spec_ratio"]
    else:
        active = bool(means.sum() > 0)
        label, top = None, (labels[0] if active else None)
        entropy, spec = (0.0, 1.0) if active else (None, None)
    share = np.nan_to_num(profile(means[:, None])[:, 0], nan=0.0)

    def num(x: Any) -> float | None:
        return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)

    return {"label": label if isinstance(label, str) else None, "top_label": top if isinstance(top, str) else None,
            "entropy": num(entropy), "specialisation": num(spec),
            "means": [float(x) for x in means], "shares": [float(x) for x in share]}


@dataclass
class ExpertStats:
    """Corpus statistics of one expert (see :func:`collect_expert_stats`). Arrays are numpy.
    "Fires" means s(t) > ``fire_threshold`` throughout."""

    ref: ExpertRef
    labels: list[str]
    n_heads: int
    fire_threshold: float = DEFAULT_FIRE_THRESHOLD
    n_tokens: int = 0
    n_fires: int = 0
    score_sum: float = 0.0
    max_score: float = 0.0
    head_sum: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [H] sum_t g_row[t,h,i] g_col[t,h,j]
    label_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [L]
    label_sum: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [L]
    label_fires: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [L]
    fine_hist: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [n_fine] firing scores over [0, H]
    top: list[tuple[float, int, int]] = field(default_factory=list)  # (score, window, pos), best first
    sample: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [n, 3] (score, window, pos) of firing tokens
    sample_seen: int = 0  # firing tokens offered to the sample (== n_fires)
    row_fires: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [E] tokens where (i, j') fires
    row_cofires: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [E] tokens where (i, j') and (i, j) fire
    row_label_sum: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [L, E] summed scores of (i, j')
    col_fires: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [E] tokens where (i', j) fires
    col_cofires: np.ndarray = field(default_factory=lambda: np.zeros(0))
    col_label_sum: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [L, E]

    @property
    def density(self) -> float:
        return self.n_fires / self.n_tokens if self.n_tokens else 0.0


class _ExpertAccumulator(StreamAccumulator):
    """The report's statistic, driven by :func:`monet_interp.stats.corpus_pass.run_pass` over
    :class:`WindowBatch` es: per chosen expert the :class:`ExpertStats` fields (see the module
    docstring). State is numpy on the CPU, one process; the firing-token sample is a uniform
    sample by random keys drawn in batch order from a generator seeded with ``seed``."""

    def __init__(self, cfg: Any, labels: list[str], experts: Sequence[ExpertRef], *, fire_threshold: float,
                 top_k: int, fine_bins: int, sample_cap: int, seed: int):
        self.thr, self.top_k, self.fine_bins, self.sample_cap = float(fire_threshold), top_k, fine_bins, sample_cap
        self.label_index = {lab: k for k, lab in enumerate(labels)}
        H, E, L = cfg.moe_heads, cfg.moe_experts, len(labels)
        self.H, self.L = H, L
        self.groups = sorted({r.group for r in experts})
        self.by_group = {g: [r for r in experts if r.group == g] for g in self.groups}
        self.stats: dict[ExpertRef, ExpertStats] = {}
        for ref in experts:
            self.stats[ref] = ExpertStats(
                ref, labels, H, self.thr, head_sum=np.zeros(H), label_tokens=np.zeros(L, dtype=np.int64),
                label_sum=np.zeros(L), label_fires=np.zeros(L, dtype=np.int64),
                fine_hist=np.zeros(fine_bins, dtype=np.int64), sample=np.zeros((0, 3)),
                row_fires=np.zeros(E, dtype=np.int64), row_cofires=np.zeros(E, dtype=np.int64),
                row_label_sum=np.zeros((L, E)), col_fires=np.zeros(E, dtype=np.int64),
                col_cofires=np.zeros(E, dtype=np.int64), col_label_sum=np.zeros((L, E)))
        self.names = {g: g_names(cfg, g) for g in self.groups}
        self.wanted = {n for pair in self.names.values() for n in pair}
        self.stop = max(first_layer(cfg, g) for g in self.groups) + 1
        self.gen = torch.Generator().manual_seed(seed)
        self.sample_keys: dict[ExpertRef, np.ndarray] = {r: np.zeros(0) for r in experts}

    def forward(self, model: Any, batch: WindowBatch) -> dict[str, torch.Tensor]:
        _, cache = model.run_with_cache(batch.tokens, attention_mask=batch.mask, stop_at_layer=self.stop,
                                        names_filter=lambda n: n in self.wanted, return_cache_object=False)
        return cache

    def add_batch(self, batch: WindowBatch, cache: dict[str, torch.Tensor]) -> None:
        thr, H, L, fine_bins, stats = self.thr, self.H, self.L, self.fine_bins, self.stats
        windows, tokens, valid = batch.windows, batch.tokens, batch.valid
        width = tokens.shape[1]
        win_ids = torch.tensor([w.index for w in windows]).repeat_interleave(width).view(len(windows), width)
        pos_ids = torch.arange(width).expand(len(windows), width)
        lab_ids = (torch.tensor([self.label_index[w.label] for w in windows]).repeat_interleave(width)
                   .view(len(windows), width))
        win_flat, pos_flat, lab_flat = win_ids[valid], pos_ids[valid], lab_ids[valid]
        onehot = torch.nn.functional.one_hot(lab_flat, L).double()  # [N, L]
        label_counts = onehot.sum(0).numpy().astype(np.int64)
        for g in self.groups:
            refs = self.by_group[g]
            g1 = cache[self.names[g][0]].detach().cpu()[valid].double()  # [N, H, E]
            g2 = cache[self.names[g][1]].detach().cpu()[valid].double()
            rows = torch.tensor([r.i for r in refs])
            cols = torch.tensor([r.j for r in refs])
            head = g1[:, :, rows] * g2[:, :, cols]  # [N, H, K]
            score = head.sum(1)  # [N, K]
            fires = score > thr
            for k0 in range(0, len(refs), 16):  # row / column neighbours, 16 experts at a time
                ks = slice(k0, k0 + 16)
                row_s = torch.einsum("nhk,nhe->nke", g1[:, :, rows[ks]], g2)  # s of (i_k, j') [N, K, E]
                col_s = torch.einsum("nhe,nhk->nke", g1, g2[:, :, cols[ks]])  # s of (i', j_k)
                f = fires[:, ks, None]
                row_f, col_f = row_s > thr, col_s > thr
                row_fires, col_fires = row_f.sum(0).numpy(), col_f.sum(0).numpy()
                row_co, col_co = (row_f & f).sum(0).numpy(), (col_f & f).sum(0).numpy()
                row_lab = torch.einsum("nl,nke->kle", onehot, row_s).numpy()
                col_lab = torch.einsum("nl,nke->kle", onehot, col_s).numpy()
                for kk, ref in enumerate(refs[ks]):
                    st = stats[ref]
                    st.row_fires += row_fires[kk]
                    st.col_fires += col_fires[kk]
                    st.row_cofires += row_co[kk]
                    st.col_cofires += col_co[kk]
                    st.row_label_sum += row_lab[kk]
                    st.col_label_sum += col_lab[kk]
            head_sums = head.sum(0).numpy()  # [H, K]
            label_sums = (onehot.T @ score).numpy()  # [L, K]
            label_fires = (onehot.T @ fires.double()).numpy().round().astype(np.int64)
            # each window's best counted position per expert: top contexts are distinct windows
            per_window = torch.full((len(windows), width, len(refs)), -1.0, dtype=torch.float64)
            per_window[valid] = score
            best, best_pos = per_window.max(1)  # [b, K]
            for k, ref in enumerate(refs):
                st = stats[ref]
                s_k = score[:, k]
                firing = fires[:, k]
                n_f = int(firing.sum())
                st.n_tokens += int(s_k.numel())
                st.n_fires += n_f
                st.score_sum += float(s_k.sum())
                st.head_sum += head_sums[:, k]
                st.label_tokens += label_counts
                st.label_sum += label_sums[:, k]
                st.label_fires += label_fires[:, k]
                if s_k.numel():
                    st.max_score = max(st.max_score, float(s_k.max()))  # over all counted tokens
                if n_f == 0:
                    continue
                vals = s_k[firing]
                bins = (vals / H * fine_bins).long().clamp(0, fine_bins - 1)
                st.fine_hist += np.bincount(bins.numpy(), minlength=fine_bins)
                cand = [(float(best[r, k]), windows[r].index, int(best_pos[r, k])) for r in range(len(windows))
                        if best[r, k] > thr]
                st.top = sorted(st.top + cand, key=lambda c: (-c[0], c[1], c[2]))[:self.top_k]
                entries = np.stack([vals.numpy(), win_flat[firing].numpy(), pos_flat[firing].numpy()], 1)
                keys = torch.rand(n_f, generator=self.gen, dtype=torch.float64).numpy()
                st.sample = np.concatenate([st.sample, entries])
                self.sample_keys[ref] = np.concatenate([self.sample_keys[ref], keys])
                st.sample_seen += n_f
                if len(st.sample) > 2 * self.sample_cap:
                    self._trim_sample(ref)

    def _trim_sample(self, ref: ExpertRef) -> None:
        """Keep the ``sample_cap`` sample entries of ``ref`` with the smallest keys (and their keys)."""
        keep = np.argsort(self.sample_keys[ref], kind="stable")[:self.sample_cap]
        self.stats[ref].sample, self.sample_keys[ref] = self.stats[ref].sample[keep], self.sample_keys[ref][keep]

    def reduce(self) -> None:
        """One process, nothing to reduce across processes: keep the ``sample_cap`` entries with
        the smallest keys, in (window, pos) order."""
        for ref, st in self.stats.items():
            if len(st.sample) > self.sample_cap:
                self._trim_sample(ref)
            order = np.lexsort((st.sample[:, 2], st.sample[:, 1])) if len(st.sample) else np.zeros(0, dtype=np.int64)
            st.sample = st.sample[order]


def collect_expert_stats(
    model: Any,
    windows: Sequence[Window],
    experts: Sequence[ExpertRef],
    *,
    fire_threshold: float = DEFAULT_FIRE_THRESHOLD,
    top_k: int = DEFAULT_TOP_K,
    fine_bins: int = DEFAULT_FINE_BINS,
    sample_cap: int = DEFAULT_SAMPLE_CAP,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = False,
) -> dict[ExpertRef, ExpertStats]:
    """One pass over ``windows`` for the chosen experts (see the module docstring): the shared
    walk :func:`monet_interp.stats.corpus_pass.run_pass` over the windows in their order,
    ``batch_size`` at a time, padded (:func:`window_batches`); the model runs only up to the first
    layer of the last chosen group. Counted tokens: every real token except bos/eos (as the
    routing statistics)."""
    experts = check_experts(model.cfg, experts)
    if not experts:
        return {}
    acc = _ExpertAccumulator(model.cfg, sorted({w.label for w in windows}), experts, fire_threshold=fire_threshold,
                             top_k=top_k, fine_bins=fine_bins, sample_cap=sample_cap, seed=seed)
    bar = progress_bar(total=math.ceil(len(windows) / batch_size), desc="expert stats", disable=not progress,
                       leave=False)
    run_pass(model, window_batches(model, windows, batch_size), acc, bar, step=lambda _: 1)
    return acc.stats


def histogram(stats: ExpertStats, n_bins: int = DEFAULT_HIST_BINS) -> dict[str, Any]:
    """Display histogram of firing scores: about ``n_bins`` equal-width bins from 0 to the max,
    aligned to the fine bins (so the counts are exact re-binnings of the fine histogram)."""
    fine = stats.fine_hist
    n_fine = len(fine)
    width_fine = stats.n_heads / n_fine
    if stats.n_fires == 0:
        return {"edges": [0.0, width_fine], "counts": [0], "bin_width": width_fine}
    last = int(np.nonzero(fine)[0].max()) + 1
    per_bin = max(1, math.ceil(last / n_bins))
    n = math.ceil(last / per_bin)
    padded = np.zeros(n * per_bin, dtype=np.int64)
    padded[:last] = fine[:last]
    counts = padded.reshape(n, per_bin).sum(1)
    edges = [float(k * per_bin * width_fine) for k in range(n + 1)]
    return {"edges": edges, "counts": [int(c) for c in counts], "bin_width": float(per_bin * width_fine)}


__all__ = ["ExpertStats", "collect_expert_stats", "histogram", "label_summary"]
