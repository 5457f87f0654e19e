"""Render expert activation reports (data from expert_report.py) as self-contained HTML pages.

Layout written by :func:`write_report`::

    OUT/index.html                 sortable, filterable table of every expert built
    OUT/experts/<slug>.html        one dashboard per expert (slug: g{group}_i{i}_j{j})
    OUT/experts/<slug>.json        the page's data (exactly what was rendered)
    OUT/assets/plotly.min.js       plotly.js, written once (or inlined per page: inline_plotly=True)
    OUT/report.json                settings and the index rows

Pages need no network and no server: CSS and the small vanilla-JS helpers (token tooltips,
table sorting/filtering) are inlined in every page, plotly.js is a local file next to them.
Rendering is pure: ``render_expert_page(page) -> str`` and ``render_index(rows) -> str``.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PLOTLY_ASSET = "assets/plotly.min.js"
SECTIONS = ("header", "heads", "histogram", "top-contexts", "intervals", "labels", "logits", "ablation",
            "neighbours", "notes")

CSS = """
:root { --fg:#1d232b; --muted:#5f6b7a; --line:#dde2e8; --bg:#f6f7f9; --card:#fff; --accent:#d9480f; }
* { box-sizing: border-box; }
body { margin:0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:var(--fg);
       background:var(--bg); }
main { max-width: 1180px; margin: 0 auto; padding: 18px 22px 60px; }
nav.top { display:flex; gap:16px; align-items:center; font-size:13px; margin-bottom:8px; }
nav.top a { color:#1c64c8; text-decoration:none; } nav.top a:hover { text-decoration:underline; }
h1 { font-size: 22px; margin: 6px 0 2px; } h1 .sub { color:var(--muted); font-weight:400; font-size:15px; }
h2 { font-size: 16px; margin: 0 0 10px; }
section { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:14px 16px;
          margin: 14px 0; }
.grid2 { display:grid; grid-template-columns: 1fr 1fr; gap: 14px; }
.grid2 > section { margin: 0; }
@media (max-width: 900px) { .grid2 { grid-template-columns: 1fr; } }
.facts { display:flex; flex-wrap:wrap; gap:10px; margin-top:10px; }
.fact { background:var(--bg); border:1px solid var(--line); border-radius:6px; padding:6px 10px; min-width:110px; }
.fact .k { color:var(--muted); font-size:11px; text-transform:uppercase; letter-spacing:.04em; }
.fact .v { font-size:16px; font-weight:600; font-variant-numeric: tabular-nums; }
.muted { color:var(--muted); } .small { font-size:12px; }
table { border-collapse: collapse; width:100%; font-variant-numeric: tabular-nums; }
th, td { text-align:left; padding:4px 8px; border-bottom:1px solid var(--line); white-space:nowrap; }
th { font-size:12px; color:var(--muted); font-weight:600; background:#fafbfc; }
td.num, th.num { text-align:right; }
table.sortable th { cursor:pointer; user-select:none; }
table.sortable th[data-dir="asc"]::after { content:" \\25B2"; } table.sortable th[data-dir="desc"]::after { content:" \\25BC"; }
tr:hover td { background:#f3f6fb; }
.pos { color:#1a7f37; } .neg { color:#c62828; }
.ctx { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size:12.5px; padding:4px 0;
       border-bottom:1px dashed var(--line); display:flex; gap:10px; align-items:baseline; }
.ctx:last-child { border-bottom:none; }
.ctx .meta { color:var(--muted); font-size:11px; min-width:150px; font-family: system-ui, sans-serif; }
.ctx .toks { white-space:pre-wrap; word-break:break-all; }
.tok { border-radius:2px; padding:0 .5px; cursor:default; }
.tok.focus { outline: 1.5px solid var(--accent); outline-offset:0; }
.tip { position:fixed; z-index:10; background:#1d232b; color:#fff; padding:6px 8px; border-radius:5px;
       font-size:12px; pointer-events:none; display:none; max-width:360px; white-space:pre; }
details { margin: 6px 0; } summary { cursor:pointer; font-weight:600; }
.controls { display:flex; gap:10px; flex-wrap:wrap; align-items:center; margin: 8px 0 10px; }
.controls input, .controls select { padding:5px 8px; border:1px solid var(--line); border-radius:5px; font:inherit; }
.badge { display:inline-block; padding:1px 7px; border-radius:10px; background:#eef2f7; font-size:12px; }
.badge.lab { background:#fff1e6; color:#a33a00; }
.note li { margin: 3px 0; }
"""

JS = r"""
(function () {
  "use strict";
  // ---- token tooltips (token, score, per-head split)
  var tip = document.createElement("div");
  tip.className = "tip";
  document.body.appendChild(tip);
  document.addEventListener("mouseover", function (ev) {
    var el = ev.target && ev.target.closest ? ev.target.closest(".tok") : null;
    if (!el) { tip.style.display = "none"; return; }
    var heads = (el.getAttribute("data-h") || "").split(",").filter(function (x) { return x !== ""; });
    var lines = ["token " + el.getAttribute("data-t"), "score " + el.getAttribute("data-s")];
    heads.forEach(function (v, h) { lines.push("  head " + h + ": " + v); });
    tip.textContent = lines.join("\n");
    tip.style.display = "block";
  });
  document.addEventListener("mousemove", function (ev) {
    if (tip.style.display === "block") {
      tip.style.left = Math.min(ev.clientX + 14, window.innerWidth - 260) + "px";
      tip.style.top = (ev.clientY + 14) + "px";
    }
  });
  // ---- sortable tables: click a header; numbers sort by data-v
  function cellValue(row, idx) {
    var cell = row.cells[idx];
    if (!cell) { return ""; }
    var v = cell.getAttribute("data-v");
    if (v !== null && v !== "" && !isNaN(Number(v))) { return Number(v); }
    return cell.textContent.trim().toLowerCase();
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, idx) {
      th.addEventListener("click", function () {
        var dir = th.getAttribute("data-dir") === "asc" ? "desc" : "asc";
        Array.prototype.forEach.call(table.tHead.rows[0].cells, function (o) { o.removeAttribute("data-dir"); });
        th.setAttribute("data-dir", dir);
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = cellValue(a, idx), y = cellValue(b, idx);
          if (typeof x === "number" && typeof y !== "number") { return -1; }
          if (typeof y === "number" && typeof x !== "number") { return 1; }
          var c = x < y ? -1 : (x > y ? 1 : 0);
          return dir === "asc" ? c : -c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  // ---- filters (index page): free text, label, group
  var text = document.getElementById("filter-text");
  var label = document.getElementById("filter-label");
  var group = document.getElementById("filter-group");
  var table = document.getElementById("experts");
  var count = document.getElementById("shown-count");
  function applyFilters() {
    if (!table) { return; }
    var q = text ? text.value.trim().toLowerCase() : "";
    var lab = label ? label.value : "";
    var grp = group ? group.value : "";
    var shown = 0;
    Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
      var ok = (!q || row.textContent.toLowerCase().indexOf(q) !== -1)
        && (!lab || row.getAttribute("data-label") === lab)
        && (!grp || row.getAttribute("data-group") === grp);
      row.style.display = ok ? "" : "none";
      if (ok) { shown += 1; }
    });
    if (count) { count.textContent = String(shown); }
  }
  [text, label, group].forEach(function (el) {
    if (el) { el.addEventListener("input", applyFilters); el.addEventListener("change", applyFilters); }
  });
  applyFilters();
})();
"""


# ============================================================================ helpers
def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """Numbers for humans: None -> em dash, floats to ``digits`` significant figures."""
    if value is None:
        return "\u2014"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.{max(1, digits - 1)}e}"
        return f"{value:.{digits}g}" if abs(value) >= 1 else f"{value:.{digits}f}".rstrip("0").rstrip(".") or "0"
    return str(value)


def pct(value: float | None) -> str:
    if value is None:
        return "\u2014"
    return f"{100 * value:.3g}%"


def show_token(text: str) -> str:
    """Visible form of a token string: newlines, tabs and empty strings made visible."""
    if text == "":
        return "\u2205"
    return text.replace("\r", "\u240d").replace("\n", "\u21b5").replace("\t", "\u2192")


def _data_num(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return repr(float(value)) if isinstance(value, float) else str(value)


def page_filename(slug: str) -> str:
    return f"{slug}.html"


def _plot(fig: Any, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                       config={"displaylogo": False, "responsive": True, "displayModeBar": False})


def _layout(fig: Any, title: str, height: int = 300, **kwargs: Any) -> Any:
    fig.update_layout(title={"text": title, "font": {"size": 13}}, height=height,
                      margin={"l": 50, "r": 16, "t": 40, "b": 40}, template="plotly_white", **kwargs)
    return fig


def plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def _page(title: str, body: str, plotly: str | None) -> str:
    """plotly: None (no plots), a relative path to plotly.min.js, or "inline"."""
    if plotly is None:
        script = ""
    elif plotly == "inline":
        script = f'<script type="text/javascript">{plotly_js()}</script>'
    else:
        script = f'<script type="text/javascript" src="{esc(plotly)}" charset="utf-8"></script>'
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style>{script}</head>"
            f"<body><main>{body}</main><script>{JS}</script></body></html>\n")


# ============================================================================ expert page
def render_tokens(example: Mapping[str, Any], max_score: float) -> str:
    """One context: each token a span coloured by the expert's score there, hover details."""
    scale = max_score if max_score > 0 else 1.0
    spans = []
    for k, (tok, score, heads) in enumerate(zip(example["tokens"], example["scores"], example["head_scores"])):
        alpha = 0.0 if score <= 0 else min(1.0, 0.08 + 0.82 * score / scale)
        style = f' style="background:rgba(255,110,20,{alpha:.3f})"' if alpha > 0 else ""
        cls = "tok focus" if k == example["focus"] else "tok"
        spans.append(f'<span class="{cls}"{style} data-t="{esc(repr(tok))}" data-s="{score:.4g}" '
                     f'data-h="{esc(",".join(f"{h:.4g}" for h in heads))}">{esc(show_token(tok))}</span>')
    return "".join(spans)


def _context_row(example: Mapping[str, Any], max_score: float) -> str:
    where = f'{esc(example["label"])} doc {esc(example["doc_index"] if example["doc_index"] is not None else example["doc"])}'
    where += f' @{example["doc_pos"]}'
    title = f' title="{esc(example["doc_key"])}"' if example.get("doc_key") else ""
    return (f'<div class="ctx"><span class="meta"{title}><b>{fmt(example["score"])}</b> \u00b7 {where}</span>'
            f'<span class="toks">{render_tokens(example, max_score)}</span></div>')


def _header(page: Mapping[str, Any], nav: Mapping[str, str | None]) -> str:
    ref, s, lab = page["ref"], page["summary"], page["label"]
    links = ['<a href="../index.html">\u2190 all experts</a>']
    if nav.get("prev"):
        links.append(f'<a href="{esc(page_filename(nav["prev"]))}">\u2039 previous</a>')
    if nav.get("next"):
        links.append(f'<a href="{esc(page_filename(nav["next"]))}">next \u203a</a>')
    facts = [
        ("routing group", ref["group"]), ("i (row)", ref["i"]), ("j (column)", ref["j"]),
        ("flat id i\u00b7E+j", ref["flat"]), ("layers", ", ".join(str(x) for x in ref["layers"])),
        ("density", pct(s["density"])), ("fires", f'{s["n_fires"]:,} / {s["n_tokens"]:,}'),
        ("max score", fmt(s["max_score"])), ("mean when firing", fmt(s["mean_score_when_firing"])),
        ("2x-rule label", lab["label"] or "none"), ("label entropy", fmt(lab["entropy"], 3)),
    ]
    cards = "".join(f'<div class="fact"><div class="k">{esc(k)}</div><div class="v">{esc(v)}</div></div>'
                    for k, v in facts)
    heads = " \u00b7 ".join(f"h{h}: {pct(v)}" for h, v in enumerate(s["head_share"]))
    return (f'<nav class="top">{" ".join(links)}</nav>'
            f'<section id="header"><h1>Expert ({ref["i"]}, {ref["j"]}) <span class="sub">routing group '
            f'{ref["group"]} \u00b7 flat id {ref["flat"]} \u00b7 {esc(ref["decompose"])} \u00b7 E={ref["n_experts"]}, '
            f'H={ref["n_heads"]}</span></h1><div class="facts">{cards}</div>'
            f'<p class="small muted">Per-head share of routing mass: {esc(heads)}</p></section>')


def _heads_section(page: Mapping[str, Any]) -> str:
    import plotly.graph_objects as go

    s = page["summary"]
    names = [f"head {h}" for h in range(len(s["head_mass"]))]
    fig = go.Figure(go.Bar(x=names, y=s["head_mass"], marker_color="#4c78a8",
                           customdata=[pct(v) for v in s["head_share"]],
                           hovertemplate="%{x}: mass %{y:.4g} (%{customdata})<extra></extra>"))
    _layout(fig, "Routing mass per head: sum over tokens of g_row[h,i]\u00b7g_col[h,j]", 260)
    return f'<section id="heads"><h2>Per-head breakdown</h2>{_plot(fig, "plot-heads")}</section>'


def _histogram_section(page: Mapping[str, Any]) -> str:
    import plotly.graph_objects as go

    h, s = page["histogram"], page["summary"]
    edges, counts = h["edges"], h["counts"]
    centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    fig = go.Figure(go.Bar(x=centres, y=counts, width=[b - a for a, b in zip(edges[:-1], edges[1:])],
                           marker_color="#f28e2b",
                           customdata=[[a, b] for a, b in zip(edges[:-1], edges[1:])],
                           hovertemplate="score %{customdata[0]:.3f}\u2013%{customdata[1]:.3f}: %{y} tokens<extra></extra>"))
    _layout(fig, f"Activation density {pct(s['density'])} ({s['n_fires']:,} of {s['n_tokens']:,} tokens with "
                 f"s > {fmt(s['fire_threshold'])})",
            300, xaxis_title="routing score s(t) (firing tokens)", bargap=0.02,
            yaxis={"type": "log", "dtick": 1, "title": {"text": "tokens"}})
    return f'<section id="histogram"><h2>Activation histogram</h2>{_plot(fig, "plot-histogram")}</section>'


def _labels_section(page: Mapping[str, Any]) -> str:
    import plotly.graph_objects as go

    rows = page["label"]["per_label"]
    fig = go.Figure(go.Bar(x=[r["label"] for r in rows], y=[r["mean_score"] for r in rows], marker_color="#59a14f",
                           customdata=[[pct(r["share"]), pct(r["fire_rate"]), r["n_tokens"]] for r in rows],
                           hovertemplate=("%{x}: mean score %{y:.4g}<br>share of profile %{customdata[0]}<br>"
                                          "fires on %{customdata[1]} of %{customdata[2]} tokens<extra></extra>")))
    _layout(fig, "Mean routing score per label (zeros included)", 300)
    body = "".join(
        f'<tr><td>{esc(r["label"])}</td><td class="num" data-v="{_data_num(r["mean_score"])}">{fmt(r["mean_score"])}</td>'
        f'<td class="num" data-v="{_data_num(r["share"])}">{pct(r["share"])}</td>'
        f'<td class="num" data-v="{_data_num(r["fire_rate"])}">{pct(r["fire_rate"])}</td>'
        f'<td class="num" data-v="{r["n_tokens"]}">{r["n_tokens"]:,}</td></tr>' for r in rows)
    lab = page["label"]
    verdict = (f'2x rule: specialised in <span class="badge lab">{esc(lab["label"])}</span>' if lab["label"]
               else "2x rule: not specialised (top label below twice the second)")
    return (f'<section id="labels"><h2>Label distribution</h2>{_plot(fig, "plot-labels")}'
            f'<p class="small">{verdict}; normalised entropy {fmt(lab["entropy"], 3)}, specialisation ratio '
            f'{fmt(lab["specialisation"], 3)}.</p>'
            f'<table class="sortable"><thead><tr><th>label</th><th class="num">mean score</th><th class="num">share</th>'
            f'<th class="num">firing rate</th><th class="num">tokens</th></tr></thead><tbody>{body}</tbody></table></section>')


def _contexts_section(page: Mapping[str, Any]) -> str:
    max_score = page["summary"]["max_score"]
    rows = "".join(_context_row(ex, max_score) for ex in page["top_contexts"])
    if not rows:
        rows = '<p class="muted">The expert never fired on this corpus.</p>'
    return (f'<section id="top-contexts"><h2>Top-activating contexts</h2>'
            f'<p class="small muted">One context per window (its best position, outlined); each token coloured by '
            f'the expert\'s score s(t) = \u03a3_h g_row[t,h,i]\u00b7g_col[t,h,j] (hover for the per-head split).</p>'
            f'{rows}</section>')


def _intervals_section(page: Mapping[str, Any]) -> str:
    max_score = page["summary"]["max_score"]
    parts = []
    for k, iv in enumerate(page["intervals"]):
        rows = "".join(_context_row(ex, max_score) for ex in iv["examples"]) or '<p class="muted small">no tokens</p>'
        parts.append(f'<details{" open" if k == 0 else ""}><summary>score {fmt(iv["lo"], 3)} \u2013 {fmt(iv["hi"], 3)} '
                     f'<span class="muted small">({iv["n_in_sample"]:,} firing tokens in sample)</span></summary>{rows}</details>')
    sample = page["sample"]
    note = (f'Equal-width score bins from 0 to the max; examples drawn at random from a uniform sample of '
            f'{sample["size"]:,} of the {sample["seen"]:,} firing tokens.')
    body = "".join(parts) or '<p class="muted">The expert never fired on this corpus.</p>'
    return f'<section id="intervals"><h2>Interval groups</h2><p class="small muted">{note}</p>{body}</section>'


def _token_rows(rows: Sequence[Mapping[str, Any]], cls: str) -> str:
    return "".join(f'<tr><td><code>{esc(show_token(r["token"]))}</code></td>'
                   f'<td class="num {cls}">{r["value"]:+.4g}</td></tr>' for r in rows)


def _logit_tables(table: Mapping[str, Any]) -> str:
    return (f'<div class="grid2"><div><table><thead><tr><th>promoted token</th><th class="num">logit</th></tr></thead>'
            f'<tbody>{_token_rows(table["positive"], "pos")}</tbody></table></div>'
            f'<div><table><thead><tr><th>suppressed token</th><th class="num">logit</th></tr></thead>'
            f'<tbody>{_token_rows(table["negative"], "neg")}</tbody></table></div></div>')


def _logits_section(page: Mapping[str, Any]) -> str:
    le = page["logit_effects"]
    if le is None:
        return ('<section id="logits"><h2>Logit effects</h2><p class="muted">No top contexts (the expert never '
                'fired), so no output direction.</p></section>')
    layers = ", ".join(str(x) for x in le["layers"])
    per_layer = "".join(f'<details><summary>layer {esc(layer)} only</summary>{_logit_tables(t)}</details>'
                        for layer, t in le["per_layer"].items())
    return (f'<section id="logits"><h2>Logit effects</h2><p class="small muted">W_U\u1d40 d, with d = \u03a3 over '
            f'layers {esc(layers)} of E_ij(x) averaged over the MoE inputs at the {le["n_contexts"]} top-context '
            f'positions (|d| = {fmt(le["direction_norm"])}); ln_final not applied.</p>{_logit_tables(le)}{per_layer}</section>')


def _ablation_section(page: Mapping[str, Any]) -> str:
    a = page["ablation"]
    where = ("its top-context windows" if a["windows"] == "top contexts"
             else "the first corpus windows (it never fired, so it has no top contexts)")
    facts = [("mean \u0394loss, all positions", fmt(a["mean_delta_loss"])),
             ("mean \u0394loss at top positions", fmt(a["mean_delta_loss_at_top"])),
             ("max |\u0394loss|", fmt(a["max_abs_delta_loss"])), ("clean loss", fmt(a["clean_loss"])),
             ("windows", a["n_windows"]), ("positions", a["n_positions"])]
    cards = "".join(f'<div class="fact"><div class="k">{esc(k)}</div><div class="v">{esc(v)}</div></div>' for k, v in facts)
    return (f'<section id="ablation"><h2>Ablation effect</h2><p class="small muted">Pruned exactly with '
            f'<code>ExpertEdit({a["edit"]["i"]}, {a["edit"]["j"]}, "prune", group={a["edit"]["group"]})</code> '
            f'(every layer of the routing group, all heads, no renormalisation); \u0394loss = pruned \u2212 clean '
            f'next-token loss in nats on {where}. "At top positions": the prediction made at the expert\'s peak.</p>'
            f'<div class="facts">{cards}</div></section>')


def _neighbour_table(rows: Sequence[Mapping[str, Any]], axis: str) -> str:
    body = []
    for r in rows:
        name = f'({r["i"]}, {r["j"]})'
        link = f'<a href="{esc(page_filename(r["slug"]))}">{name}</a>' if r["built"] else name
        label = f'<span class="badge lab">{esc(r["label"])}</span>' if r["label"] else '<span class="muted">none</span>'
        body.append(f'<tr><td>{link}</td><td class="num" data-v="{r["flat"]}">{r["flat"]}</td>'
                    f'<td class="num" data-v="{_data_num(r["coactivation"])}">{pct(r["coactivation"])}</td>'
                    f'<td class="num" data-v="{_data_num(r["jaccard"])}">{fmt(r["jaccard"], 3)}</td>'
                    f'<td class="num" data-v="{_data_num(r["density"])}">{pct(r["density"])}</td><td>{label}</td></tr>')
    title = "same row i (experts (i, j\u2032))" if axis == "row" else "same column j (experts (i\u2032, j))"
    return (f'<div><h3 class="small">{title}</h3><table class="sortable"><thead><tr><th>expert</th><th class="num">flat</th>'
            f'<th class="num">P(fires | this fires)</th><th class="num">Jaccard</th><th class="num">density</th>'
            f'<th>2x label</th></tr></thead><tbody>{"".join(body)}</tbody></table></div>')


def _neighbours_section(page: Mapping[str, Any]) -> str:
    nb = page["neighbours"]
    return (f'<section id="neighbours"><h2>Product-key neighbours</h2><p class="small muted">Experts sharing this '
            f'expert\'s bottom half i or top half j, ranked by co-activation over the corpus (tokens where both '
            f'fire / tokens where this one fires).</p><div class="grid2">{_neighbour_table(nb["row"], "row")}'
            f'{_neighbour_table(nb["col"], "col")}</div></section>')


NOTES = """
<section id="notes" class="note"><h2>How to read this page</h2><ul class="small">
<li><b>Score</b> s(t) = \u03a3<sub>h</sub> g_row[t,h,i]\u00b7g_col[t,h,j] (the paper's routing score, in [0, H]),
read from the routing hooks of the group's first layer; the expert <i>fires</i> when s(t) exceeds the fire threshold
(as in the routing statistics). bos/eos tokens are run but not counted.</li>
<li><b>Density</b>: share of tokens where it fires. <b>Histogram</b>: firing tokens only, log counts.</li>
<li><b>Labels</b>: per-label mean score over all of the label's tokens; the MONET 2x rule names a label when its
mean is at least twice the second highest; entropy is of the normalised profile, divided by log(#labels).</li>
<li><b>Logit effects</b>: the expert's output per unit routing weight, E_ij(x), averaged over its top-context
inputs, summed over the group's layers, times W_U (no final norm).</li>
<li><b>Ablation</b>: exact pruning of this one expert in every layer of its routing group.</li>
</ul></section>
"""


def render_expert_page(page: Mapping[str, Any], plotly: str | None = "../" + PLOTLY_ASSET,
                       nav: Mapping[str, str | None] | None = None) -> str:
    """One expert's dashboard. ``plotly``: relative path to plotly.min.js or "inline"."""
    ref = page["ref"]
    body = (_header(page, nav or {}) + '<div class="grid2">' + _histogram_section(page) + _heads_section(page)
            + "</div>" + _contexts_section(page) + _intervals_section(page) + _labels_section(page)
            + _logits_section(page) + _ablation_section(page) + _neighbours_section(page) + NOTES)
    return _page(f"Expert ({ref['i']}, {ref['j']}) of group {ref['group']}", body, plotly)


# ============================================================================ index
INDEX_COLUMNS = (("expert", "text"), ("group", "num"), ("i", "num"), ("j", "num"), ("flat", "num"), ("label", "text"),
                 ("top label", "text"), ("entropy", "num"), ("density", "num"), ("max score", "num"),
                 ("\u0394loss", "num"))


def render_index(rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any] | None = None) -> str:
    """The index: a sortable, filterable table linking to every expert page."""
    meta = meta or {}
    body_rows = []
    for r in rows:
        href = f'experts/{page_filename(r["slug"])}'
        label = r["label"] or ""
        cells = [
            f'<td><a href="{esc(href)}">({r["i"]}, {r["j"]})</a></td>',
            f'<td class="num" data-v="{r["group"]}">{r["group"]}</td>',
            f'<td class="num" data-v="{r["i"]}">{r["i"]}</td>', f'<td class="num" data-v="{r["j"]}">{r["j"]}</td>',
            f'<td class="num" data-v="{r["flat"]}">{r["flat"]}</td>',
            f'<td>{esc(label) if label else "<span class=muted>none</span>"}</td>',
            f'<td>{esc(r["top_label"] or "")}</td>',
            f'<td class="num" data-v="{_data_num(r["entropy"])}">{fmt(r["entropy"], 3)}</td>',
            f'<td class="num" data-v="{_data_num(r["density"])}">{pct(r["density"])}</td>',
            f'<td class="num" data-v="{_data_num(r["max_score"])}">{fmt(r["max_score"])}</td>',
            f'<td class="num" data-v="{_data_num(r["delta_loss"])}">{fmt(r["delta_loss"])}</td>',
        ]
        body_rows.append(f'<tr data-slug="{esc(r["slug"])}" data-label="{esc(label)}" data-group="{r["group"]}">'
                         f'{"".join(cells)}</tr>')
    head = "".join(f'<th class="{kind}">{esc(name)}</th>' for name, kind in INDEX_COLUMNS)
    labels = sorted({r["label"] for r in rows if r["label"]})
    groups = sorted({r["group"] for r in rows})
    label_opts = "".join(f'<option value="{esc(x)}">{esc(x)}</option>' for x in labels)
    group_opts = "".join(f'<option value="{g}">group {g}</option>' for g in groups)
    facts = "".join(f'<div class="fact"><div class="k">{esc(k)}</div><div class="v">{esc(v)}</div></div>'
                    for k, v in meta.get("facts", {}).items())
    body = (f'<section id="index-header"><h1>Expert activation report <span class="sub">'
            f'{esc(meta.get("model", ""))}</span></h1><div class="facts">{facts}</div>'
            f'<p class="small muted">{esc(meta.get("description", ""))}</p></section>'
            f'<section id="index"><div class="controls"><input id="filter-text" type="search" '
            f'placeholder="filter rows\u2026" aria-label="filter rows">'
            f'<select id="filter-label" aria-label="label"><option value="">all labels</option>{label_opts}</select>'
            f'<select id="filter-group" aria-label="group"><option value="">all groups</option>{group_opts}</select>'
            f'<span class="small muted"><span id="shown-count">{len(rows)}</span> of {len(rows)} experts shown; '
            f'click a column to sort</span></div>'
            f'<table id="experts" class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(body_rows)}</tbody>'
            f'</table></section>')
    return _page("Expert activation report", body, None)


# ============================================================================ writing
def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_report(out_dir: str | Path, pages: Sequence[Mapping[str, Any]], meta: Mapping[str, Any] | None = None,
                 inline_plotly: bool = False) -> Path:
    """Write index.html, experts/<slug>.html + .json, assets/plotly.min.js, report.json. Returns index.html."""
    from monet_interp.analyses.expert_report import index_row

    out = Path(out_dir)
    (out / "experts").mkdir(parents=True, exist_ok=True)
    plotly = "inline" if inline_plotly else "../" + PLOTLY_ASSET
    if not inline_plotly:
        asset = out / PLOTLY_ASSET
        asset.parent.mkdir(parents=True, exist_ok=True)
        source = plotly_js()
        if not asset.is_file() or asset.read_text(encoding="utf-8") != source:
            asset.write_text(source, encoding="utf-8")
    slugs = [p["ref"]["slug"] for p in pages]
    for k, page in enumerate(pages):
        nav = {"prev": slugs[k - 1] if k > 0 else None, "next": slugs[k + 1] if k + 1 < len(slugs) else None}
        slug = page["ref"]["slug"]
        (out / "experts" / page_filename(slug)).write_text(render_expert_page(page, plotly, nav), encoding="utf-8")
        (out / "experts" / f"{slug}.json").write_text(json.dumps(page, default=_json_default, indent=1), encoding="utf-8")
    rows = [index_row(p) for p in pages]
    index = out / "index.html"
    index.write_text(render_index(rows, meta), encoding="utf-8")
    (out / "report.json").write_text(json.dumps({"meta": dict(meta or {}), "experts": rows}, default=_json_default,
                                                indent=1), encoding="utf-8")
    return index
