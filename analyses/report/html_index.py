"""Write expert activation reports (data from :mod:`.data`) as self-contained HTML pages.

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

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monet_interp.analyses.report.data import index_row
from monet_interp.analyses.report.html_base import (
    PLOTLY_ASSET,
    esc,
    fact_cards,
    fmt,
    html_page,
    num_cell,
    page_filename,
    pct,
    plotly_js,
)
from monet_interp.analyses.report.html_expert import render_expert_page

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
            num_cell(r["group"]), num_cell(r["i"]), num_cell(r["j"]), num_cell(r["flat"]),
            f'<td>{esc(label) if label else "<span class=muted>none</span>"}</td>',
            f'<td>{esc(r["top_label"] or "")}</td>',
            num_cell(r["entropy"], fmt(r["entropy"], 3)), num_cell(r["density"], pct(r["density"])),
            num_cell(r["max_score"], fmt(r["max_score"])), num_cell(r["delta_loss"], fmt(r["delta_loss"])),
        ]
        body_rows.append(f'<tr data-slug="{esc(r["slug"])}" data-label="{esc(label)}" data-group="{r["group"]}">'
                         f'{"".join(cells)}</tr>')
    head = "".join(f'<th class="{kind}">{esc(name)}</th>' for name, kind in INDEX_COLUMNS)
    labels = sorted({r["label"] for r in rows if r["label"]})
    groups = sorted({r["group"] for r in rows})
    label_opts = "".join(f'<option value="{esc(x)}">{esc(x)}</option>' for x in labels)
    group_opts = "".join(f'<option value="{g}">group {g}</option>' for g in groups)
    facts = fact_cards(meta.get("facts", {}).items())
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
    return html_page("Expert activation report", body, None)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_report(out_dir: str | Path, pages: Sequence[Mapping[str, Any]], meta: Mapping[str, Any] | None = None,
                 inline_plotly: bool = False) -> Path:
    """Write index.html, experts/<slug>.html + .json, assets/plotly.min.js, report.json. Returns index.html."""
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


__all__ = ["render_index", "write_report"]
