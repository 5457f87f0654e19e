"""Shared pieces of the report's HTML pages: the inlined CSS and JS, the page shell, number and
token formatting, and plotly helpers."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable
from typing import Any

PLOTLY_ASSET = "assets/plotly.min.js"

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


def data_num(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return repr(float(value)) if isinstance(value, float) else str(value)


def num_cell(value: Any, text: str | None = None) -> str:
    """A right-aligned table cell that sorts by ``value`` (``data-v``) and shows ``text`` (default:
    the value itself)."""
    return f'<td class="num" data-v="{data_num(value)}">{value if text is None else text}</td>'


def fact_cards(facts: Iterable[tuple[Any, Any]]) -> str:
    """One ``.fact`` card (name over value, both escaped) per (name, value) pair."""
    return "".join(f'<div class="fact"><div class="k">{esc(k)}</div><div class="v">{esc(v)}</div></div>'
                   for k, v in facts)


def page_filename(slug: str) -> str:
    return f"{slug}.html"


def plot_div(fig: Any, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                       config={"displaylogo": False, "responsive": True, "displayModeBar": False})


def plot_layout(fig: Any, title: str, height: int = 300, **kwargs: Any) -> Any:
    fig.update_layout(title={"text": title, "font": {"size": 13}}, height=height,
                      margin={"l": 50, "r": 16, "t": 40, "b": 40}, template="plotly_white", **kwargs)
    return fig


def plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def html_page(title: str, body: str, plotly: str | None) -> str:
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


__all__ = ["CSS", "JS", "PLOTLY_ASSET", "data_num", "esc", "fact_cards", "fmt", "html_page", "num_cell",
           "page_filename", "pct", "plot_div", "plot_layout", "plotly_js", "show_token"]
