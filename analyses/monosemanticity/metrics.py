"""Label metrics of units from per-label means [L, N] (2x rule, profile, entropy, specialisation
ratio) and detection metrics from document maxima (AUROC, precision / recall, best F1)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from monet_interp.stats import share_over_labels

DEFAULT_RATIO = 2.0
METRICS = ("entropy", "spec_ratio", "skew", "auroc", "best_f1")
METRIC_TITLES = {
    "entropy": "normalised label entropy (0 = one label)",
    "spec_ratio": "specialisation ratio max q * |labels|",
    "skew": "r(top) / r(second)  (2x rule at 2)",
    "auroc": "AUROC, top label, document max",
    "best_f1": "best F1, top label, document max",
    "best_auroc": "best AUROC over labels",
}


# ============================================================================================
# label metrics from per-label means [L, N]
# ============================================================================================


def _as_2d(means: np.ndarray) -> np.ndarray:
    m = np.asarray(means, dtype=np.float64)
    return m[:, None] if m.ndim == 1 else m


def two_x_rule(means: np.ndarray, ratio: float = DEFAULT_RATIO) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MONET's rule on per-label means [L, N] (or [L]): (specialised bool [N], top label [N],
    skew = r(top) / r(second) [N]). A unit with all means 0 is not specialised (skew NaN); one
    with a single active label has skew inf. Needs >= 2 labels."""
    m = _as_2d(means)
    if m.shape[0] < 2:
        raise ValueError("the 2x rule needs at least two labels")
    order = np.argsort(-m, axis=0, kind="stable")
    top = order[0]
    cols = np.arange(m.shape[1])
    r1, r2 = m[top, cols], m[order[1], cols]
    with np.errstate(divide="ignore", invalid="ignore"):
        skew = np.where(r1 > 0, np.where(r2 > 0, r1 / np.where(r2 > 0, r2, 1), np.inf), np.nan)
    specialised = (r1 > 0) & (r1 >= ratio * r2)
    return specialised, top, skew


def profile(means: np.ndarray) -> np.ndarray:
    """q_u(D) = r_u(D) / sum_D' r_u(D') over the given labels; NaN columns for inactive units."""
    return share_over_labels(_as_2d(means))


def normalised_entropy(means: np.ndarray) -> np.ndarray:
    """H(q_u) / log |labels| per unit, in [0, 1] (NaN for inactive units)."""
    q = profile(means)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(q > 0, q * np.log(np.where(q > 0, q, 1)), 0.0).sum(0)
    h = np.where(np.isnan(q).any(0), np.nan, h)
    return h / np.log(q.shape[0]) if q.shape[0] > 1 else np.zeros_like(h)


def specialisation_ratio(means: np.ndarray) -> np.ndarray:
    """max_D q_u(D) * |labels| per unit, in [1, |labels|] (NaN for inactive units)."""
    q = profile(means)
    dead = np.isnan(q).any(0)
    return np.where(dead, np.nan, np.where(dead[None], 0.0, q).max(0) * q.shape[0])


def label_metrics(means: np.ndarray, labels: Sequence[str], *, ratio: float = DEFAULT_RATIO) -> pd.DataFrame:
    """One row per unit: active, top_label, second_label, r_top, r_second, skew, specialised,
    label (the top label if specialised, else None), entropy, spec_ratio."""
    m = _as_2d(means)
    labels = list(labels)
    if len(labels) != m.shape[0]:
        raise ValueError(f"{len(labels)} labels for means with {m.shape[0]} rows")
    specialised, top, skew = two_x_rule(m, ratio)
    order = np.argsort(-m, axis=0, kind="stable")
    cols = np.arange(m.shape[1])
    active = m.sum(0) > 0
    lab = np.array(labels, dtype=object)
    return pd.DataFrame({
        "unit": cols,
        "active": active,
        "top_label": np.where(active, lab[top], None),
        "second_label": np.where(active, lab[order[1]], None),
        "r_top": m[top, cols],
        "r_second": m[order[1], cols],
        "skew": skew,
        "specialised": specialised,
        "label": np.where(specialised, lab[top], None),
        "entropy": normalised_entropy(m),
        "spec_ratio": specialisation_ratio(m),
    })


# ============================================================================================
# detection metrics
# ============================================================================================


def average_ranks(scores: np.ndarray) -> np.ndarray:
    """Ranks (1-based, ties averaged) along axis 0 of [D, N] (or [D])."""
    s = np.asarray(scores, dtype=np.float64)
    squeeze = s.ndim == 1
    s = s[:, None] if squeeze else s
    n = s.shape[0]
    order = np.argsort(s, axis=0, kind="mergesort")
    srt = np.take_along_axis(s, order, 0)
    idx = np.broadcast_to(np.arange(n)[:, None], s.shape)
    first = np.ones(s.shape, dtype=bool)
    first[1:] = srt[1:] != srt[:-1]
    last = np.ones(s.shape, dtype=bool)
    last[:-1] = first[1:]
    start = np.maximum.accumulate(np.where(first, idx, 0), axis=0)
    end = np.minimum.accumulate(np.where(last, idx, n - 1)[::-1], axis=0)[::-1]
    ranks = np.empty(s.shape)
    np.put_along_axis(ranks, order, (start + end) / 2.0 + 1.0, 0)
    return ranks[:, 0] if squeeze else ranks


class RankedScores:
    """Scores [D, N] sorted once, for detection metrics against many label sets (the sorting
    does not depend on the labels)."""

    def __init__(self, scores: np.ndarray):
        self.scores = _as_2d(scores)
        self.ranks = average_ranks(self.scores)
        n = self.scores.shape[0]
        self.order = np.argsort(-self.scores, axis=0, kind="mergesort")
        self.sorted = np.take_along_axis(self.scores, self.order, 0)
        group_end = np.ones(self.sorted.shape, dtype=bool)
        group_end[:-1] = self.sorted[1:] != self.sorted[:-1]
        self.valid = group_end & np.isfinite(self.sorted)  # a -inf score (no counted token) is never predicted
        self.k = np.arange(1, n + 1)[:, None]

    def auroc(self, positive: np.ndarray) -> np.ndarray:
        y = np.asarray(positive, dtype=bool)
        n1 = int(y.sum())
        n0 = len(y) - n1
        if n1 == 0 or n0 == 0:
            return np.full(self.scores.shape[1], np.nan)
        return (self.ranks[y].sum(0) - n1 * (n1 + 1) / 2.0) / (n1 * n0)

    def best_f1(self, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y = np.asarray(positive, dtype=bool)
        n, n_units = self.scores.shape
        n1 = y.sum()
        if n1 == 0 or n == 0:
            return np.full(n_units, np.nan), np.full(n_units, np.nan)
        tp = np.cumsum(y[self.order], axis=0)
        f1 = np.where(self.valid, 2.0 * tp / (self.k + n1), -1.0)
        best = f1.argmax(0)
        cols = np.arange(n_units)
        cut = self.sorted[best, cols]
        lower = np.where(best + 1 < n, self.sorted[np.minimum(best + 1, n - 1), cols], -np.inf)
        with np.errstate(invalid="ignore"):
            thr = np.where(np.isfinite(lower), (cut + lower) / 2.0, cut - 1.0)
        nothing = f1[best, cols] <= 0  # no cut finds a positive: predict nothing
        return np.where(nothing, 0.0, f1[best, cols]), np.where(nothing, np.inf, thr)


def auroc(scores: np.ndarray, positive: np.ndarray) -> np.ndarray | float:
    """Area under the ROC curve of ``scores`` [D] or [D, N] for the boolean labels ``positive``
    [D] (Mann-Whitney U; ties count 1/2). NaN when one class is empty."""
    out = RankedScores(scores).auroc(positive)
    return float(out[0]) if np.asarray(scores).ndim == 1 else out


def precision_recall_at(scores: np.ndarray, positive: np.ndarray, tau: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision P(positive | s > tau) (NaN if nothing passes) and recall P(s > tau | positive)
    per unit; ``tau`` scalar or per unit [N]."""
    s = _as_2d(scores)
    y = np.asarray(positive, dtype=bool)
    pred = s > np.asarray(tau, dtype=np.float64)
    tp = (pred & y[:, None]).sum(0)
    npred = pred.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(npred > 0, tp / np.maximum(npred, 1), np.nan)
        recall = tp / y.sum() if y.sum() else np.full(s.shape[1], np.nan)
    return precision, recall


def best_f1(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(best F1 over thresholds, the threshold) per unit; prediction is s > threshold, the
    threshold being the midpoint between the cut score and the next lower distinct score
    (inf, with F1 0, when no threshold finds a positive)."""
    return RankedScores(scores).best_f1(positive)


def detection_metrics(doc_max: np.ndarray, doc_label: np.ndarray, label_names: Sequence[str], *,
                      labels: Sequence[int] | None = None, pool: Sequence[int] | None = None,
                      tau: float | np.ndarray | None = None, units: np.ndarray | None = None) -> pd.DataFrame:
    """Long table (unit, label, auroc, best_f1, best_threshold, tau, precision, recall) of each
    unit against each label in ``labels`` (indices; default all), over the documents whose label
    is in ``pool`` (default: all documents), e.g. python vs the other code labels.

    doc_max [D, N]: max activation per document; doc_label [D]: label index per document.
    Precision/recall use ``tau`` when given, else each unit's best-F1 threshold."""
    doc_max = _as_2d(doc_max)
    doc_label = np.asarray(doc_label)
    labels = list(range(len(label_names))) if labels is None else [int(x) for x in labels]
    keep = np.isin(doc_label, list(range(len(label_names))) if pool is None else [int(x) for x in pool])
    dm, dl = doc_max[keep], doc_label[keep]
    unit_ids = np.arange(dm.shape[1]) if units is None else np.asarray(units)
    if units is not None:
        dm = dm[:, unit_ids]
    ranked = RankedScores(dm)
    rows = []
    for lab in labels:
        y = dl == lab
        a = ranked.auroc(y)
        f1, thr = ranked.best_f1(y)
        t = thr if tau is None else np.broadcast_to(np.asarray(tau, dtype=np.float64), thr.shape)
        p, r = precision_recall_at(dm, y, t)
        rows.append(pd.DataFrame({"unit": unit_ids, "label": label_names[lab], "auroc": a, "best_f1": f1,
                                  "best_threshold": thr, "tau": t, "precision": p, "recall": r}))
    return pd.concat(rows, ignore_index=True)
