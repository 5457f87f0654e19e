"""Plotly figures of the monosemanticity analysis."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from monet_interp.analyses.monosemanticity.factors import factor_label_map, factor_purity
from monet_interp.analyses.monosemanticity.metrics import DEFAULT_RATIO, METRIC_TITLES, METRICS
from monet_interp.analyses.monosemanticity.tables import specialisation_summary


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
