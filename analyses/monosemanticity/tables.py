"""One row per unit of a UnitStats (label metrics + detection), per token type, and summaries
over unit sets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from monet_interp.analyses.monosemanticity.metrics import (
    DEFAULT_RATIO,
    auroc,
    best_f1,
    detection_metrics,
    label_metrics,
)


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
