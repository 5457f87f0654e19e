"""The factor structure of MONET experts: which label each specialised expert (i, j) of a group
passes the 2x rule for, and how pure the rows i and columns j are."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from monet_interp.analyses.monosemanticity.metrics import DEFAULT_RATIO, two_x_rule
from monet_interp.analyses.monosemanticity.tables import select_labels


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
