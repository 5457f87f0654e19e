"""HTML of an unlearning result: one self-contained <section> (notes, tables, figures)."""

from __future__ import annotations

import html as html_lib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd


def _fmt_frame(frame: pd.DataFrame, digits: int = 2) -> str:
    return frame.to_html(float_format=lambda v: f"{v:.{digits}f}", border=0, classes="unl-table", na_rep="")


def _table_with_colour(table: pd.DataFrame, metric: str) -> str:
    """A paper-style table as HTML with cells tinted by sign (red = worse)."""
    values = table.to_numpy(dtype=float)
    bound = float(np.nanmax(np.abs(values))) if values.size and np.isfinite(values).any() else 1.0
    bound = bound or 1.0
    worse_sign = -1.0 if metric != "bpb" else 1.0
    head = "".join(f"<th>{html_lib.escape(str(c))}</th>" for c in table.columns)
    body = []
    for idx, row in table.iterrows():
        cells = []
        for col, v in row.items():
            if not np.isfinite(v):
                cells.append("<td></td>")
                continue
            alpha = min(1.0, abs(v) / bound) * 0.75
            colour = f"rgba(198,40,40,{alpha:.2f})" if v * worse_sign > 0 else f"rgba(25,118,210,{alpha:.2f})"
            style = f"background:{colour};" + ("font-weight:700;outline:1px solid #333;" if col == idx else "")
            cells.append(f"<td style='{style}'>{v:+.2f}</td>")
        body.append(f"<tr><th>{html_lib.escape(str(idx))}</th>{''.join(cells)}</tr>")
    return (f"<div class='unl-scroll'><table class='unl-table'><thead><tr><th>forget \\ measured</th>{head}</tr>"
            f"</thead><tbody>{''.join(body)}</tbody></table></div>")


HTML_CSS = """
.unl section, section.unl { font: 14px/1.45 system-ui, sans-serif; }
.unl-table { border-collapse: collapse; font-variant-numeric: tabular-nums; font-size: 12px; }
.unl-table th, .unl-table td { padding: 3px 6px; border-bottom: 1px solid #e3e6ea; text-align: right; white-space: nowrap; }
.unl-table th { background: #fafbfc; color: #555; }
.unl-scroll { overflow-x: auto; max-width: 100%; }
.unl-note { color: #555; font-size: 13px; }
"""


def render_html_section(result: Any, title: str = "Unlearning", include_plotlyjs: bool | str = "inline",
                        tables_for: Sequence[str] | None = None) -> str:
    """See :meth:`UnlearningResult.html_section`."""
    s = result.settings
    parts = [f"<section class='unl'><style>{HTML_CSS}</style><h2>{html_lib.escape(title)}</h2>"]
    parts.append(
        "<p class='unl-note'>Units are removed and next-token metrics measured on held-out text of every label, "
        "against the clean model. MONET experts are pruned exactly through the edit API (whole routing group, "
        "all heads unless stated); dense MLP neurons are zeroed; SAE features on MLP outputs are clamped negative "
        "with the SAE error term kept (x' = x + (f' - f) W_dec), so the reconstruction error costs nothing. "
        f"Selection statistics on the {s['stat_split']} split ({s['stat_tokens']} tokens per label), curves and "
        f"operating points on {s['select_split']}, reported numbers on {s['eval_split']} ({s['eval_forget_tokens']} tokens "
        f"of the forgotten label, {s['eval_tokens']} of every other label). Operating point of a curve: the largest forget top-1 drop with retain top-1 drop <= "
        f"{s['retain_budget']} point. Accuracy changes in points (negative = drop); bits-per-byte changes positive "
        "= worse; selectivity = dTarget - dOthers.</p>")
    parts.append("<h3>Overview (mean over forgotten labels)</h3>" + _fmt_frame(result.overview()))
    cols = ["method", "forget", "n_removed", "d_target_top1", "d_others_top1", "selectivity_top1", "d_target_bpb",
            "d_others_bpb", "selectivity_bpb", "within_budget"]
    parts.append("<h3>Per forgotten label</h3><div class='unl-scroll'>"
                 + _fmt_frame(result.summary[[c for c in cols if c in result.summary]].set_index(["method", "forget"]),
                              3) + "</div>")
    names = list(tables_for) if tables_for is not None else result.method_names
    for name in names:
        if (result.points["method"] == name).any():
            parts.append(f"<h3>{html_lib.escape(name)}: change of top-1 accuracy (points)</h3>"
                         + _table_with_colour(result.table(name, "top1"), "top1"))
    first = [include_plotlyjs]
    try:
        figs = [result.figure_curves(), result.figure_share_curve("top1"), result.figure_selectivity("top1"),
                result.figure_selectivity("bpb")]
        for fig in figs:
            parts.append(fig.to_html(full_html=False, include_plotlyjs=first[0], default_width="100%"))
            first[0] = False
    except ImportError:  # pragma: no cover - plotly is a dependency
        parts.append("<p>(plotly not installed: no figures)</p>")
    t = result.timing
    parts.append(f"<p class='unl-note'>Wall time {t.get('total_s', 0):.1f} s (statistics {t.get('statistics_s', 0):.1f} s, "
                 f"evaluation {t.get('evaluation_s', 0):.1f} s).</p>")
    for note in result.notes:
        parts.append(f"<p class='unl-note'>{html_lib.escape(note)}</p>")
    parts.append("</section>")
    return "\n".join(parts)



__all__ = ["HTML_CSS", "render_html_section"]
