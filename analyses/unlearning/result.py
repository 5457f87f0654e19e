"""The result of a sweep: pandas tables, paper-style tables, plotly figures, files."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from monet_interp.analyses.unlearning.render import render_html_section


@dataclass
class UnlearningResult:
    """Everything a sweep measured (pandas DataFrames) plus tables, figures and an HTML section.

    clean: clean-model metrics per (model, label) on the evaluation split.
    curves: one row per (method, forget, point) on the selection split: n_removed, fraction,
        forget_* and retain_* metrics (retain = mean over the other labels) and their deltas.
    points: one row per (method, forget, label) on the evaluation split at the operating point:
        clean and edited metrics and deltas (d_*).
    summary: one row per (method, forget): n_removed, d_target_* / d_others_* / selectivity_*,
        the operating point's selection-split retain drop, within_budget, and target_share_removed
        (share of the forget label's statistic, e.g. routing mass, carried by the removed units).
    selections: {(method, forget): unit ids removed at the operating point}.
    """

    clean: pd.DataFrame
    curves: pd.DataFrame
    points: pd.DataFrame
    summary: pd.DataFrame
    selections: dict[tuple[str, str], torch.Tensor]
    methods: list[dict[str, Any]]
    labels: list[str]
    label_kinds: dict[str, str]
    settings: dict[str, Any]
    timing: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    # ---------------------------------------------------------------- tables
    def table(self, method: str, metric: str = "top1") -> pd.DataFrame:
        """Paper layout for one method: rows = forgotten label, columns = every label, cells = the
        change of ``metric`` (points for accuracies, bits per byte for bpb) at the operating point."""
        sub = self.points[self.points["method"] == method]
        if sub.empty:
            raise KeyError(f"no results for method {method!r}; methods: {self.method_names}")
        table = sub.pivot(index="forget", columns="label", values=f"d_{metric}")
        rows = [lab for lab in self.labels if lab in table.index]
        cols = [lab for lab in self.labels if lab in table.columns]
        return table.loc[rows, cols]

    @property
    def method_names(self) -> list[str]:
        return [m["name"] for m in self.methods]

    def overview(self) -> pd.DataFrame:
        """Per method, means over the forgotten labels of the summary columns."""
        cols = ["n_removed", "frac_removed", "d_target_top1", "d_others_top1", "selectivity_top1",
                "d_target_bpb", "d_others_bpb", "selectivity_bpb", "d_target_top10", "d_others_top10",
                "d_target_top1_skip", "d_others_top1_skip", "target_share_removed", "within_budget"]
        frame = self.summary.groupby("method", sort=False)[[c for c in cols if c in self.summary]].mean()
        frame.insert(0, "labels", self.summary.groupby("method", sort=False).size())
        return frame

    def by_kind(self) -> pd.DataFrame:
        """Per method and kind of the forgotten label (code / natural): mean summary columns."""
        cols = ["n_removed", "d_target_top1", "d_others_top1", "selectivity_top1", "d_target_bpb", "d_others_bpb",
                "selectivity_bpb"]
        return self.summary.groupby(["method", "kind"], sort=False)[cols].mean()

    def compare(self, reference: str, metric: str = "selectivity_top1") -> pd.DataFrame:
        """Per forgotten label, ``metric`` of every method and whether ``reference`` beats it
        (lower is better for accuracy selectivity, higher for bpb)."""
        wide = self.summary.pivot(index="forget", columns="method", values=metric)
        better = (lambda a, b: a < b) if "bpb" not in metric else (lambda a, b: a > b)
        out = wide.copy()
        for other in wide.columns:
            if other != reference:
                out[f"{reference} beats {other}"] = better(wide[reference], wide[other])
        return out

    def markdown(self, metric: str = "top1", digits: int = 2, counts: bool = True) -> str:
        """A Markdown table: rows = forgotten label, one column per method with
        "dTarget / dOthers" of ``metric`` at the operating point (and the number of units removed),
        then the mean row."""
        names = [n for n in self.method_names if (self.summary["method"] == n).any()]
        head = "| forget | " + " | ".join(names) + " |"
        lines = [head, "|" + "---|" * (len(names) + 1)]
        forgets = [lab for lab in self.labels if lab in set(self.summary["forget"])]
        index = self.summary.set_index(["method", "forget"])

        def cell(row: Any) -> str:
            text = f"{row[f'd_target_{metric}']:+.{digits}f} / {row[f'd_others_{metric}']:+.{digits}f}"
            return text + (f" ({int(row['n_removed'])})" if counts else "")

        for lab in forgets:
            cells = [cell(index.loc[(n, lab)]) if (n, lab) in index.index else "" for n in names]
            lines.append(f"| {lab} | " + " | ".join(cells) + " |")
        means = self.summary.groupby("method")[[f"d_target_{metric}", f"d_others_{metric}", "n_removed"]].mean()
        lines.append("| **mean** | " + " | ".join(
            f"**{means.loc[n, f'd_target_{metric}']:+.{digits}f} / {means.loc[n, f'd_others_{metric}']:+.{digits}f}**"
            + (f" ({means.loc[n, 'n_removed']:.0f})" if counts else "") for n in names) + " |")
        return "\n".join(lines)

    def goal(self, labels: Sequence[str] | None = None, target: float = -5.0, others: float = 0.5,
             metric: str = "top1", kind: str = "expert") -> pd.DataFrame:
        """Which forgotten labels some method on ``kind`` units (default MONET experts) removes:
        d_target <= ``target`` while |d_others| <= ``others`` (``metric``, evaluation split, at each
        method's operating point). One row per label (``labels``: default every forgotten one):
        met, the best such method (most negative d_target), its d_target / d_others / n_removed;
        where none meets the goal, the most selective method whose |d_others| stays within
        ``others`` (or None) is shown with met = False."""
        names = {m["name"] for m in self.methods if m.get("units", {}).get("kind") == kind}
        if not names:
            raise KeyError(f"no method on {kind!r} units; methods: {self.method_names}")
        sub = self.summary[self.summary["method"].isin(names)]
        dt, do = f"d_target_{metric}", f"d_others_{metric}"
        rows = []
        for lab in labels if labels is not None else [x for x in self.labels if x in set(sub["forget"])]:
            mine = sub[sub["forget"] == lab]
            if mine.empty:
                raise KeyError(f"label {lab!r} was not forgotten by any {kind} method")
            ok = mine[(mine[dt] <= target) & (mine[do].abs() <= others)]
            calm = mine[mine[do].abs() <= others]
            pick = ok if not ok.empty else calm
            best = pick.loc[pick[dt].idxmin()] if not pick.empty else None
            rows.append({"forget": lab, "met": not ok.empty,
                         "method": None if best is None else best["method"],
                         dt: np.nan if best is None else float(best[dt]),
                         do: np.nan if best is None else float(best[do]),
                         "n_removed": np.nan if best is None else int(best["n_removed"])})
        return pd.DataFrame(rows).set_index("forget")

    # ---------------------------------------------------------------- figures
    def figure_curves(self, forget: str | None = None, metric: str = "top1"):
        """Forget vs retain change along each method's curve (selection split). forget=None: the
        mean over forgotten labels at each curve point index."""
        import plotly.graph_objects as go

        fig = go.Figure()
        if self.curves.empty:
            fig.update_layout(title="No curves (only fixed-size selections were run)", template="plotly_white")
            return fig
        data = self.curves if forget is None else self.curves[self.curves["forget"] == forget]
        for name in self.method_names:
            sub = data[data["method"] == name]
            if sub.empty:
                continue
            if forget is None:
                sub = sub.groupby("point", as_index=False)[[f"d_forget_{metric}", f"d_retain_{metric}",
                                                              "n_removed"]].mean()
            sub = sub.sort_values("n_removed")
            fig.add_trace(go.Scatter(x=sub[f"d_retain_{metric}"], y=sub[f"d_forget_{metric}"], mode="lines+markers",
                                     name=name, text=[f"{n:.0f} units" for n in sub["n_removed"]],
                                     hovertemplate="%{text}<br>retain %{x:.2f}<br>forget %{y:.2f}<extra>" + name
                                     + "</extra>"))
        unit = "points" if metric != "bpb" else "bits/byte"
        fig.update_layout(title=f"Forget vs retain change of {metric} along each curve"
                          + (f" (forget {forget})" if forget else " (mean over forgotten labels)"),
                          xaxis_title=f"retain change ({unit})", yaxis_title=f"forget change ({unit})",
                          template="plotly_white", height=420)
        if metric != "bpb":
            fig.add_vline(x=-self.settings.get("retain_budget", 1.0), line_dash="dot", line_color="gray")
        return fig

    def share_curve(self, metric: str = "top1") -> pd.DataFrame:
        """Mean over forgotten labels of the curves' fraction-grid points (selection split): one row
        per (method, fraction) with frac_removed (share of the method's units removed) and the mean
        d_forget / d_retain of ``metric``, so unit families compare at an equal share removed."""
        cols = ["frac_removed", "n_removed", f"d_forget_{metric}", f"d_retain_{metric}"]
        if self.curves.empty:
            return pd.DataFrame(columns=["method", "fraction", *cols])
        grid = self.curves[self.curves["point_kind"].astype(str).str.startswith("fraction")].copy()
        grid["fraction"] = grid["point_kind"].str.split().str[-1].astype(float)
        out = grid.groupby(["method", "fraction"], sort=False)[cols].mean().reset_index()
        return out.sort_values(["method", "fraction"], kind="stable").reset_index(drop=True)

    def figure_share_curve(self, metric: str = "top1"):
        """Forget and retain change against the share of units removed (log x), one colour per
        method: the equal-share comparison of MONET experts, dense neurons and SAE features."""
        import plotly.graph_objects as go

        data = self.share_curve(metric)
        fig = go.Figure()
        for index, name in enumerate(n for n in self.method_names if (data["method"] == n).any()):
            sub = data[data["method"] == name]
            colour = f"hsl({(index * 67) % 360},65%,45%)"
            fig.add_trace(go.Scatter(x=sub["frac_removed"], y=sub[f"d_forget_{metric}"], mode="lines+markers",
                                     name=f"{name}: forget", line=dict(color=colour)))
            fig.add_trace(go.Scatter(x=sub["frac_removed"], y=sub[f"d_retain_{metric}"], mode="lines+markers",
                                     name=f"{name}: retain", line=dict(color=colour, dash="dot")))
        unit = "points" if metric != "bpb" else "bits/byte"
        fig.update_layout(title=f"Change of {metric} against the share of units removed (mean over forgotten labels)",
                          xaxis_title="share of the method's units removed", yaxis_title=f"change ({unit})",
                          xaxis_type="log", template="plotly_white", height=420)
        return fig

    def figure_table(self, method: str, metric: str = "top1"):
        """Heatmap of :meth:`table` (rows forgotten, columns measured)."""
        import plotly.graph_objects as go

        table = self.table(method, metric)
        values = table.to_numpy(dtype=float)
        bound = float(np.nanmax(np.abs(values))) if values.size and np.isfinite(values).any() else 1.0
        scale = "RdBu" if metric != "bpb" else "RdBu_r"
        fig = go.Figure(go.Heatmap(z=values, x=list(table.columns), y=list(table.index), colorscale=scale,
                                   zmin=-bound, zmax=bound, colorbar=dict(title=f"d{metric}")))
        fig.update_layout(title=f"{method}: change of {metric} (rows: forgotten label)", template="plotly_white",
                          height=max(320, 22 * len(table) + 160), xaxis_tickangle=-45)
        fig.update_yaxes(autorange="reversed")
        return fig

    def figure_selectivity(self, metric: str = "top1"):
        """dTarget and dOthers per forgotten label, grouped by method."""
        import plotly.graph_objects as go

        fig = go.Figure()
        for name in self.method_names:
            sub = self.summary[self.summary["method"] == name]
            fig.add_trace(go.Bar(x=sub["forget"], y=sub[f"d_target_{metric}"], name=f"{name}: dTarget"))
            fig.add_trace(go.Scatter(x=sub["forget"], y=sub[f"d_others_{metric}"], mode="markers",
                                     name=f"{name}: dOthers", marker_symbol="x"))
        fig.update_layout(barmode="group", template="plotly_white", height=440, xaxis_tickangle=-45,
                          title=f"Change of {metric} on the forgotten label (bars) and the others (x)")
        return fig

    def figures(self) -> dict[str, Any]:
        out = {"curves_top1": self.figure_curves(), "share_curve_top1": self.figure_share_curve("top1"),
               "selectivity_top1": self.figure_selectivity("top1"),
               "selectivity_bpb": self.figure_selectivity("bpb")}
        for name in self.method_names:
            if (self.points["method"] == name).any():
                out[f"table_top1:{name}"] = self.figure_table(name, "top1")
        return out

    # ---------------------------------------------------------------- HTML + files
    def html_section(self, title: str = "Unlearning: deleting experts against fair baselines",
                     include_plotlyjs: bool | str = "inline", tables_for: Sequence[str] | None = None) -> str:
        """A self-contained HTML fragment (one <section>): method notes, overview and per-label
        summary tables, paper-style tables, figures. include_plotlyjs: "inline" (plotly.js once,
        inlined: works offline), "cdn", or False when the embedding page already loads plotly."""
        return render_html_section(self, title=title, include_plotlyjs=include_plotlyjs, tables_for=tables_for)

    def save(self, folder: str | Path, html: bool = True) -> Path:
        """Write CSVs (clean, curves, points, summary, overview), selections.json, settings.json and
        unlearning.html into ``folder``."""
        import json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.clean.to_csv(folder / "clean.csv")
        self.curves.to_csv(folder / "curves.csv", index=False)
        self.points.to_csv(folder / "points.csv", index=False)
        self.summary.to_csv(folder / "summary.csv", index=False)
        self.overview().to_csv(folder / "overview.csv")
        sel = {f"{m}|{f}": ids.tolist() for (m, f), ids in self.selections.items()}
        (folder / "selections.json").write_text(json.dumps(sel))
        meta = {"settings": self.settings, "timing": self.timing, "methods": self.methods, "labels": self.labels,
                "label_kinds": self.label_kinds, "notes": self.notes}
        (folder / "settings.json").write_text(json.dumps(meta, indent=1, default=str))
        if html:
            body = self.html_section()
            (folder / "unlearning.html").write_text(
                "<!doctype html><html><head><meta charset='utf-8'><title>unlearning</title></head><body>"
                + body + "</body></html>")
        return folder



__all__ = ["UnlearningResult"]
