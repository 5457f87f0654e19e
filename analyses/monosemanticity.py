"""Monosemanticity of any unit set (MONET experts, dense neurons, SAE features) against labels.

Metrics (``/work/shared/reference/evals.md``), per unit u with per-label mean activation r_u(D):

- MONET's 2x rule: u is specialised in its top label D1 iff r_u(D1) >= 2 r_u(D2), D2 the
  second-highest label (``skew`` = r_u(D1) / r_u(D2), inf when only one label is active).
- normalised label entropy H(q_u) / log |labels| with the profile q_u(D) = r_u(D) / sum r_u
  (0 = one label, 1 = uniform) and the specialisation ratio max_D q_u(D) * |labels| (1 = uniform,
  |labels| = one label).
- detection with the document-level maximum s_u(x) = max over x's tokens: AUROC, precision
  P(label = D | s_u > tau), recall P(s_u > tau | label = D), best F1 (over tau).
- the same on code token types (Pygments) at token level (a second, finer axis than language).

All functions take :class:`monet_interp.stats.UnitStats` (``RoutingStats.units(group)`` for
experts, ``compute_unit_stats`` for anything else) or plain arrays, and return pandas DataFrames
or plotly figures. Nothing is printed. Label subsets: ``label_kind="code"`` (languages) or
``"natural"`` (domains), or an explicit list; the 2x rule and the entropies are computed among
the selected labels only.

    experts = [rs.units(g) for g in range(rs.n_groups)]
    table = expert_table(rs, label_kind="code")              # one row per expert of every group
    neurons = monosemanticity_table(neuron_stats, label_kind="code")
    fig = compare_figure({"MONET experts": table, "dense neurons": neurons})
    fig2 = factor_structure_figure(rs, group=0, label_kind="code")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

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
    m = _as_2d(means)
    total = m.sum(0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, m / np.where(total > 0, total, 1), np.nan)


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


# ============================================================================================
# tables for a unit set
# ============================================================================================


def select_labels(stats: Any, label_kind: str | Sequence[str] | None = None) -> list[int]:
    """Indices of the labels of ``stats`` to use: all, those of a kind ("code"/"natural"), or an
    explicit list of names."""
    if label_kind is None:
        return list(range(len(stats.labels)))
    if isinstance(label_kind, str):
        idx = [k for k, kind in enumerate(stats.label_kinds) if kind == label_kind]
        if not idx:
            raise ValueError(f"no labels of kind {label_kind!r}; kinds: {sorted(set(stats.label_kinds))}")
        return idx
    return [stats.labels.index(name) for name in label_kind]


def _unit_columns(stats: Any, n: int) -> dict[str, Any]:
    if stats.kind == "expert" and "n_experts" in stats.metadata and stats.unit_names is None:
        E = int(stats.metadata["n_experts"])
        u = np.arange(n)
        return {"group": int(stats.metadata.get("group", 0)), "i": u // E, "j": u % E}
    return {}


def monosemanticity_table(stats: Any, *, label_kind: str | Sequence[str] | None = None,
                          ratio: float = DEFAULT_RATIO, tau: float | None = None, detection: bool = True) -> pd.DataFrame:
    """One row per unit of a UnitStats: label metrics (2x rule, entropy, specialisation ratio) over
    the selected labels, and (when the stats have document maxima and ``detection``) detection
    metrics against the unit's top label (auroc, best_f1, precision, recall) plus the best AUROC
    over all selected labels (best_auroc, best_auroc_label). Columns ``unit_set``, ``kind``,
    ``name`` identify units; experts also get ``group``, ``i``, ``j``."""
    idx = select_labels(stats, label_kind)
    names = [stats.labels[k] for k in idx]
    means = stats.mean_activation()[idx]
    table = label_metrics(means, names, ratio=ratio)
    n = table.shape[0]
    front = {"unit_set": stats.name, "kind": stats.kind, **_unit_columns(stats, n)}
    for k, (col, val) in enumerate(front.items()):
        table.insert(1 + k, col, val)
    table.insert(1 + len(front), "name", [stats.unit_label(u) for u in range(n)])
    table["frequency"] = (stats.fire_count[idx].sum(0) / max(int(stats.tokens[idx].sum()), 1))
    if detection and stats.doc_max is not None:
        det = detection_metrics(stats.doc_max, stats.doc_label, stats.labels, labels=idx, pool=idx, tau=tau)
        auc = det.pivot(index="unit", columns="label", values="auroc")[names].to_numpy()
        top_names = table["top_label"].to_numpy()
        det_top = det.set_index(["unit", "label"])
        pick = [(u, lab) for u, lab in zip(table["unit"], top_names) if pd.notna(lab)]
        got = det_top.loc[pick] if pick else det_top.iloc[:0]
        for col in ("auroc", "best_f1", "precision", "recall"):
            table[col] = np.nan
            if pick:
                table.loc[[u for u, _ in pick], col] = got[col].to_numpy()
        best = np.nanargmax(np.where(np.isnan(auc), -np.inf, auc), axis=1)
        table["best_auroc"] = auc[np.arange(n), best]
        table["best_auroc_label"] = np.array(names, dtype=object)[best]
    return table


def expert_table(rs: Any, *, groups: Sequence[int] | None = None, **kwargs: Any) -> pd.DataFrame:
    """:func:`monosemanticity_table` of the experts of every (or the given) routing group of a
    RoutingStats, concatenated (columns group, i, j identify experts)."""
    groups = range(rs.n_groups) if groups is None else groups
    return pd.concat([monosemanticity_table(rs.units(g), **kwargs) for g in groups], ignore_index=True)


def token_type_table(stats: Any, *, ratio: float = DEFAULT_RATIO) -> pd.DataFrame:
    """Per unit, the label metrics over code token types (per-type mean activation from the
    classifier pass) and, when a token sample exists, token-level detection of the unit's top
    type: auroc, best_f1 (activation of the token vs "token is of that type"), over the
    sampled classified tokens."""
    if stats.class_act_sum is None:
        raise ValueError("no token classes: compute the statistics with token_classes=PygmentsTokenTyper(...)")
    means = stats.class_mean()
    table = label_metrics(means, stats.class_names, ratio=ratio)
    table.insert(1, "unit_set", stats.name)
    table.insert(2, "kind", stats.kind)
    for k, (col, val) in enumerate(_unit_columns(stats, table.shape[0]).items()):
        table.insert(3 + k, col, val)
    if stats.sample_act is not None and len(stats.sample_key):
        cls = np.asarray(stats.sample_class)
        acts = stats.sample_act
        table["auroc"] = np.nan
        table["best_f1"] = np.nan
        top = table["top_label"].to_numpy()
        for c, name in enumerate(stats.class_names):
            units = np.flatnonzero(top == name)
            if len(units) == 0:
                continue
            y = cls == c
            table.loc[units, "auroc"] = auroc(acts[:, units], y)
            table.loc[units, "best_f1"] = best_f1(acts[:, units], y)[0]
    return table


def specialisation_summary(table: pd.DataFrame, by: Sequence[str] = ("unit_set",)) -> pd.DataFrame:
    """Share of units passing the 2x rule per label (columns: the ``by`` keys, label, n_units,
    n_active, n_specialised, share = n_specialised / n_units, share_active = / n_active)."""
    by = [b for b in by if b in table.columns]
    rows = []
    for key, part in (table.groupby(by, sort=False) if by else [((), table)]):
        key = key if isinstance(key, tuple) else (key,)
        labels = [lab for lab in pd.unique(part["top_label"].dropna())]
        for lab in sorted(labels):
            spec = int((part["label"] == lab).sum())
            rows.append({**dict(zip(by, key)), "label": lab, "n_units": len(part), "n_active": int(part["active"].sum()),
                         "n_specialised": spec, "share": spec / len(part),
                         "share_active": spec / max(int(part["active"].sum()), 1)})
    return pd.DataFrame(rows)


def summary_table(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per unit set: units, active share, share passing the 2x rule, median entropy,
    median specialisation ratio, mean/median AUROC (top label) and best F1 over active units."""
    rows = []
    for name, t in tables.items():
        act = t[t["active"]]
        row = {"unit_set": name, "n_units": len(t), "active": len(act) / max(len(t), 1),
               "specialised": float(t["specialised"].mean()) if len(t) else np.nan,
               "entropy_median": float(act["entropy"].median()) if len(act) else np.nan,
               "spec_ratio_median": float(act["spec_ratio"].median()) if len(act) else np.nan}
        for col in ("auroc", "best_f1", "best_auroc"):
            if col in t.columns:
                row[f"{col}_mean"] = float(act[col].mean())
                row[f"{col}_median"] = float(act[col].median())
        rows.append(row)
    return pd.DataFrame(rows)


# ============================================================================================
# factor structure of specialised experts
# ============================================================================================


def factor_label_map(rs: Any, group: int, *, label_kind: str | Sequence[str] | None = None,
                     ratio: float = DEFAULT_RATIO) -> tuple[np.ndarray, list[str]]:
    """([E, E] int: index into the returned label names of expert (i, j)'s 2x-rule label, -1 if
    not specialised, label names)."""
    idx = select_labels(rs, label_kind)
    E = rs.n_experts
    means = rs.mean_score()[idx, group].reshape(len(idx), E * E)
    specialised, top, _ = two_x_rule(means, ratio)
    return np.where(specialised, top, -1).reshape(E, E), [rs.labels[k] for k in idx]


def _purity(label_map: np.ndarray, axis: int, n_labels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row (axis=1 reduces over j) or column: (n specialised, dominant label, purity)."""
    lines = label_map if axis == 1 else label_map.T
    counts = np.stack([(lines == lab).sum(1) for lab in range(n_labels)], 1)  # [E, labels]
    n = counts.sum(1)
    dom = counts.argmax(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        purity = np.where(n > 0, counts.max(1) / np.maximum(n, 1), np.nan)
    return n, np.where(n > 0, dom, -1), purity


def factor_purity(rs: Any, group: int, *, label_kind: str | Sequence[str] | None = None,
                  ratio: float = DEFAULT_RATIO, n_shuffles: int = 200, seed: int = 0) -> pd.DataFrame:
    """How specialised experts share rows i and columns j. One row per (axis, index): n_specialised
    experts in that row/column, dominant_label, purity (share of them with the dominant label),
    and shuffled_purity: the mean purity of the same row/column when the specialised experts'
    labels are permuted at random over their positions (the no-structure baseline)."""
    label_map, names = factor_label_map(rs, group, label_kind=label_kind, ratio=ratio)
    L = len(names)
    rng = np.random.default_rng(seed)
    flat = label_map.reshape(-1)
    spec_pos = np.flatnonzero(flat >= 0)
    frames = []
    for axis, name in ((1, "row"), (0, "col")):
        n, dom, pur = _purity(label_map, axis, L)
        shuffled = np.zeros_like(pur)
        for _ in range(n_shuffles):
            perm = flat.copy()
            perm[spec_pos] = rng.permutation(flat[spec_pos])
            shuffled += np.nan_to_num(_purity(perm.reshape(label_map.shape), axis, L)[2])
        shuffled = np.where(n > 0, shuffled / max(n_shuffles, 1), np.nan)
        frames.append(pd.DataFrame({"group": group, "axis": name, "index": np.arange(len(n)), "n_specialised": n,
                                    "dominant_label": [names[d] if d >= 0 else None for d in dom], "purity": pur,
                                    "shuffled_purity": shuffled}))
    return pd.concat(frames, ignore_index=True)


def _label_colors(n: int) -> list[str]:
    import plotly.express as px

    palette = px.colors.qualitative.Dark24 + px.colors.qualitative.Light24
    return [palette[k % len(palette)] for k in range(n)]


def factor_structure_figure(rs: Any, group: int, *, label_kind: str | Sequence[str] | None = None,
                            ratio: float = DEFAULT_RATIO, n_shuffles: int = 200, seed: int = 0):
    """Heatmap of the [E, E] label map of specialised experts of one group (rows i, columns j;
    colour = label, blank = not specialised), with the purity of each row and column beside it
    (bars; dashed line: purity under random placement)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    label_map, names = factor_label_map(rs, group, label_kind=label_kind, ratio=ratio)
    purity = factor_purity(rs, group, label_kind=label_kind, ratio=ratio, n_shuffles=n_shuffles, seed=seed)
    E, L = rs.n_experts, len(names)
    colors = _label_colors(L)
    fig = make_subplots(rows=2, cols=2, column_widths=[0.8, 0.2], row_heights=[0.2, 0.8], shared_xaxes="columns",
                        shared_yaxes="rows", horizontal_spacing=0.02, vertical_spacing=0.02)
    z = np.where(label_map >= 0, label_map, np.nan).astype(float)
    if L == 1:
        scale = [[0, colors[0]], [1, colors[0]]]
    else:
        scale = []
        for k in range(L):
            scale += [[k / L, colors[k]], [(k + 1) / L, colors[k]]]
    text = np.where(label_map >= 0, np.array(names, dtype=object)[np.maximum(label_map, 0)], "")
    fig.add_trace(go.Heatmap(z=z, x=np.arange(E), y=np.arange(E), zmin=-0.5, zmax=L - 0.5, colorscale=scale,
                             text=text, hovertemplate="i=%{y} j=%{x}: %{text}<extra></extra>",
                             colorbar=dict(tickvals=list(range(L)), ticktext=names, title="label", x=1.02)), 2, 1)
    for axis, r, c, orient in (("col", 1, 1, "v"), ("row", 2, 2, "h")):
        part = purity[purity["axis"] == axis]
        idx, pur, base = part["index"].to_numpy(), part["purity"].to_numpy(), part["shuffled_purity"].to_numpy()
        bar_col = [colors[names.index(d)] if pd.notna(d) else "#cccccc" for d in part["dominant_label"]]
        kw = dict(x=idx, y=pur) if orient == "v" else dict(x=pur, y=idx, orientation="h")
        fig.add_trace(go.Bar(**kw, marker_color=bar_col, name=f"{axis} purity", showlegend=False,
                             customdata=np.stack([part["n_specialised"], part["dominant_label"].fillna("")], 1),
                             hovertemplate=f"{axis} %{{{'x' if orient == 'v' else 'y'}}}: purity "
                                           f"%{{{'y' if orient == 'v' else 'x'}:.2f}} of %{{customdata[0]}} "
                                           f"(%{{customdata[1]}})<extra></extra>"), r, c)
        kw = dict(x=idx, y=base) if orient == "v" else dict(x=base, y=idx)
        fig.add_trace(go.Scatter(**kw, mode="lines", line=dict(dash="dash", color="black", width=1),
                                 name="random placement", showlegend=axis == "col"), r, c)
    n_spec = int((label_map >= 0).sum())
    fig.update_yaxes(autorange="reversed", title_text="row i", row=2, col=1)
    fig.update_xaxes(title_text="column j", row=2, col=1)
    fig.update_yaxes(range=[0, 1.05], title_text="purity", row=1, col=1)
    fig.update_xaxes(range=[0, 1.05], title_text="purity", row=2, col=2)
    fig.update_layout(title=f"Group {group}: {n_spec} of {E * E} experts pass the {ratio:g}x rule "
                            f"({', '.join(names)})", height=720, width=860, bargap=0.05,
                      legend=dict(orientation="h", y=-0.08))
    return fig


# ============================================================================================
# comparison figures
# ============================================================================================


def compare_figure(tables: Mapping[str, pd.DataFrame], metrics: Sequence[str] = METRICS, *,
                   active_only: bool = True):
    """Distributions of the per-unit metrics, one panel per metric, unit sets side by side
    (box + all points for small sets). ``tables``: {unit set name: monosemanticity_table}."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    metrics = [m for m in metrics if any(m in t.columns for t in tables.values())]
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[METRIC_TITLES.get(m, m) for m in metrics],
                        horizontal_spacing=0.06)
    colors = _label_colors(len(tables))
    for col, metric in enumerate(metrics, start=1):
        for k, (name, t) in enumerate(tables.items()):
            if metric not in t.columns:
                continue
            part = t[t["active"]] if active_only else t
            vals = part[metric].replace([np.inf, -np.inf], np.nan).dropna()
            if metric == "skew":
                vals = np.log2(vals[vals > 0])
            fig.add_trace(go.Box(y=vals, name=name, marker_color=colors[k], boxpoints="outliers" if len(vals) > 2000
                                 else "suspectedoutliers", legendgroup=name, showlegend=col == 1), 1, col)
        if metric == "skew":
            fig.add_hline(y=1.0, line_dash="dash", line_color="gray", row=1, col=col)
            fig.update_yaxes(title_text="log2 skew", row=1, col=col)
    fig.update_layout(title="Monosemanticity metrics per unit", height=480, width=max(320 * len(metrics), 640),
                      boxmode="group")
    return fig


def specialisation_share_figure(tables: Mapping[str, pd.DataFrame]):
    """Grouped bars: share of units passing the 2x rule per label, one bar per unit set."""
    import plotly.graph_objects as go

    summary = specialisation_summary(pd.concat([t.assign(unit_set=name) for name, t in tables.items()],
                                               ignore_index=True))
    fig = go.Figure()
    colors = _label_colors(len(tables))
    for k, name in enumerate(tables):
        part = summary[summary["unit_set"] == name]
        fig.add_trace(go.Bar(x=part["label"], y=100 * part["share"], name=name, marker_color=colors[k],
                             customdata=part["n_specialised"],
                             hovertemplate="%{x}: %{y:.2f}% (%{customdata} units)<extra>" + name + "</extra>"))
    fig.update_layout(barmode="group", yaxis_title="% of units specialised (2x rule)",
                      title="Units passing the 2x rule, per label", height=420)
    return fig


# ============================================================================================
# everything at once
# ============================================================================================


def analyse(rs: Any, baselines: Mapping[str, Any] | None = None, *, label_kinds: Sequence[str | None] = ("code", "natural"),
            ratio: float = DEFAULT_RATIO, figures: bool = True, n_shuffles: int = 200) -> dict[str, Any]:
    """Tables and figures of the whole monosemanticity analysis.

    rs: RoutingStats of the MONET model; baselines: {name: UnitStats} (dense neurons, SAE
    features) computed on the same corpus/split. For each label kind k present ("code" =
    languages, "natural" = domains; None = all labels together), returns
    ``tables[k]`` = {unit set: per-unit table}, ``summary[k]``, ``shares[k]`` (per-label share
    passing the 2x rule) and, with ``figures``, ``compare[k]``, ``share_figure[k]`` and
    ``factor[k][group]``; plus ``token_types`` = {unit set: table} for every stats object that
    has token classes. Kinds with fewer than two labels are skipped. Keys of the result: tables, summary, shares, compare, share_figure,
    factor, token_types."""
    baselines = dict(baselines or {})
    kinds = [k for k in label_kinds if (len(rs.labels) if k is None else rs.label_kinds.count(k)) >= 2]
    out: dict[str, Any] = {"tables": {}, "summary": {}, "shares": {}, "compare": {}, "share_figure": {}, "factor": {},
                           "token_types": {}}
    for kind in kinds:
        key = kind or "all"
        tables = {"MONET experts": expert_table(rs, label_kind=kind, ratio=ratio)}
        for name, stats in baselines.items():
            tables[name] = monosemanticity_table(stats, label_kind=kind, ratio=ratio)
        out["tables"][key] = tables
        out["summary"][key] = summary_table(tables)
        out["shares"][key] = specialisation_summary(pd.concat([t.assign(unit_set=n) for n, t in tables.items()],
                                                              ignore_index=True))
        if figures:
            out["compare"][key] = compare_figure(tables)
            out["share_figure"][key] = specialisation_share_figure(tables)
            out["factor"][key] = {g: factor_structure_figure(rs, g, label_kind=kind, ratio=ratio, n_shuffles=n_shuffles)
                                  for g in range(rs.n_groups)}
    if rs.class_names is not None:
        out["token_types"]["MONET experts"] = pd.concat([token_type_table(rs.units(g), ratio=ratio)
                                                         for g in range(rs.n_groups)], ignore_index=True)
    for name, stats in baselines.items():
        if stats.class_names is not None:
            out["token_types"][name] = token_type_table(stats, ratio=ratio)
    return out
