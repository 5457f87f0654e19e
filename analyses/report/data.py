"""Report data for a list of experts, and choosing the experts (top per label)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from monet_interp.analyses.report.expert_stats import collect_expert_stats
from monet_interp.analyses.report.experts import DEFAULT_CTX_LEN, DEFAULT_FIRE_THRESHOLD, DEFAULT_TOP_K, ExpertRef, check_experts
from monet_interp.analyses.report.pages import build_expert_page
from monet_interp.analyses.report.windows import Document, Window, resolve_split
from monet_interp.data import open_corpus
from monet_interp.progress import progress_bar
from monet_interp.stats import share_over_labels


def index_row(page: Mapping[str, Any]) -> dict[str, Any]:
    """One row of the index table."""
    ref, summary, label = page["ref"], page["summary"], page["label"]
    return {"group": ref["group"], "i": ref["i"], "j": ref["j"], "flat": ref["flat"], "slug": ref["slug"],
            "label": label["label"], "top_label": label["top_label"], "entropy": label["entropy"],
            "density": summary["density"], "max_score": summary["max_score"],
            "delta_loss": page["ablation"]["mean_delta_loss"]}


def build_report_data(
    model: Any,
    windows: Sequence[Window],
    experts: Sequence[ExpertRef],
    *,
    documents: Sequence[Document] | None = None,
    fire_threshold: float = DEFAULT_FIRE_THRESHOLD,
    top_k: int = DEFAULT_TOP_K,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = False,
    on_page: Callable[[dict[str, Any]], None] | None = None,
    **page_kwargs: Any,
) -> list[dict[str, Any]]:
    """Statistics pass + one page dict per expert (``on_page`` is called as each page is ready)."""
    experts = check_experts(model.cfg, experts)
    stats = collect_expert_stats(model, windows, experts, fire_threshold=fire_threshold, top_k=top_k,
                                 batch_size=batch_size, seed=seed, progress=progress)
    pages = []
    for ref in progress_bar(experts, total=len(experts), desc="expert pages", disable=not progress, leave=False):
        page = build_expert_page(model, windows, stats[ref], documents=documents, built=experts,
                                 batch_size=batch_size, seed=seed, **page_kwargs)
        pages.append(page)
        if on_page is not None:
            on_page(page)
    return pages


def routing_stats_for(model: Any, corpus: Any, *, split: str | None = None, labels: Sequence[str] | None = None,
                      ctx_len: int = DEFAULT_CTX_LEN, max_tokens_per_label: int | None = None,
                      fire_threshold: float = DEFAULT_FIRE_THRESHOLD, batch_size: int = 8, top_k: int = 0,
                      progress: bool = False) -> Any:
    """``monet_interp.stats.compute_routing_stats`` over the same documents and windows as
    :func:`plan_report_windows` (by default without top-k buffers: selection needs only the
    sums and counts)."""
    from monet_interp.stats import compute_routing_stats

    corpus = open_corpus(corpus, model, verify=False)
    return compute_routing_stats(model, corpus, split=resolve_split(corpus, split), labels=labels,
                                 max_tokens_per_label=max_tokens_per_label, seq_len=ctx_len, batch_size=batch_size,
                                 top_k=top_k, fire_threshold=fire_threshold, progress=progress)


def _two_x_label(means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(passes the MONET 2x rule, index of the top label) per expert from per-label means
    [L, E, E]; with a single label, an expert passes when its mean is > 0."""
    from monet_interp.analyses.monosemanticity import two_x_rule

    if len(means) < 2:
        return means[0] > 0, np.zeros(means.shape[1:], dtype=np.int64)
    passes, best, _ = two_x_rule(means.reshape(len(means), -1))
    return passes.reshape(means.shape[1:]), best.reshape(means.shape[1:])


def select_top_per_label(routing_stats: Any, n: int, min_fires: int = 20, groups: Sequence[int] | None = None,
                         require_label: bool = True) -> dict[str, list[ExpertRef]]:
    """The ``n`` experts most specialised in each label, from a ``RoutingStats``: ranked by the
    share q_e(D) of their per-label mean score r_e(D) (ties: larger r_e(D), then smaller id),
    among experts firing on >= ``min_fires`` counted tokens and (with ``require_label``)
    passing the 2x rule for D."""
    labels = list(routing_stats.labels)
    r = routing_stats.mean_score()  # [L, G, E, E]
    fires = routing_stats.fire_count.sum(0)  # [G, E, E]
    groups = range(routing_stats.n_groups) if groups is None else groups
    candidates: dict[str, list[tuple[float, float, ExpertRef]]] = {lab: [] for lab in labels}
    for g in groups:
        rg = r[:, g]
        share = share_over_labels(rg)  # NaN for experts never routed: never > 0 below
        passes, best = _two_x_label(rg)
        for k, lab in enumerate(labels):
            mask = (fires[g] >= min_fires) & (share[k] > 0)
            if require_label:
                mask &= passes & (best == k)
            ii, jj = np.nonzero(mask)
            candidates[lab] += [(float(share[k, i, j]), float(rg[k, i, j]), ExpertRef(int(g), int(i), int(j)))
                                for i, j in zip(ii.tolist(), jj.tolist())]
    out = {}
    for lab in labels:
        ranked = sorted(candidates[lab], key=lambda c: (-c[0], -c[1], c[2]))
        out[lab] = [ref for _, _, ref in ranked[:n]]
    return out


__all__ = ["build_report_data", "index_row", "routing_stats_for", "select_top_per_label"]
