"""The HTML dashboard of one expert (data from :func:`..pages.build_expert_page`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from monet_interp.analyses.report.html_base import (
    PLOTLY_ASSET,
    esc,
    fact_cards,
    fmt,
    html_page,
    num_cell,
    page_filename,
    pct,
    plot_div,
    plot_layout,
    show_token,
)

PAGE_SECTIONS = ("header", "heads", "histogram", "top-contexts", "intervals", "labels", "logits",
                 "ablation", "neighbours", "notes")


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
    heads = " \u00b7 ".join(f"h{h}: {pct(v)}" for h, v in enumerate(s["head_share"]))
    return (f'<nav class="top">{" ".join(links)}</nav>'
            f'<section id="header"><h1>Expert ({ref["i"]}, {ref["j"]}) <span class="sub">routing group '
            f'{ref["group"]} \u00b7 flat id {ref["flat"]} \u00b7 {esc(ref["decompose"])} \u00b7 E={ref["n_experts"]}, '
            f'H={ref["n_heads"]}</span></h1><div class="facts">{fact_cards(facts)}</div>'
            f'<p class="small muted">Per-head share of routing mass: {esc(heads)}</p></section>')


def _heads_section(page: Mapping[str, Any]) -> str:
    import plotly.graph_objects as go

    s = page["summary"]
    names = [f"head {h}" for h in range(len(s["head_mass"]))]
    fig = go.Figure(go.Bar(x=names, y=s["head_mass"], marker_color="#4c78a8",
                           customdata=[pct(v) for v in s["head_share"]],
                           hovertemplate="%{x}: mass %{y:.4g} (%{customdata})<extra></extra>"))
    plot_layout(fig, "Routing mass per head: sum over tokens of g_row[h,i]\u00b7g_col[h,j]", 260)
    return f'<section id="heads"><h2>Per-head breakdown</h2>{plot_div(fig, "plot-heads")}</section>'


def _histogram_section(page: Mapping[str, Any]) -> str:
    import plotly.graph_objects as go

    h, s = page["histogram"], page["summary"]
    edges, counts = h["edges"], h["counts"]
    centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    fig = go.Figure(go.Bar(x=centres, y=counts, width=[b - a for a, b in zip(edges[:-1], edges[1:])],
                           marker_color="#f28e2b",
                           customdata=[[a, b] for a, b in zip(edges[:-1], edges[1:])],
                           hovertemplate="score %{customdata[0]:.3f}\u2013%{customdata[1]:.3f}: %{y} tokens<extra></extra>"))
    plot_layout(fig, f"Activation density {pct(s['density'])} ({s['n_fires']:,} of {s['n_tokens']:,} tokens with "
                 f"s > {fmt(s['fire_threshold'])})",
            300, xaxis_title="routing score s(t) (firing tokens)", bargap=0.02,
            yaxis={"type": "log", "dtick": 1, "title": {"text": "tokens"}})
    return f'<section id="histogram"><h2>Activation histogram</h2>{plot_div(fig, "plot-histogram")}</section>'


def _labels_section(page: Mapping[str, Any]) -> str:
    import plotly.graph_objects as go

    rows = page["label"]["per_label"]
    fig = go.Figure(go.Bar(x=[r["label"] for r in rows], y=[r["mean_score"] for r in rows], marker_color="#59a14f",
                           customdata=[[pct(r["share"]), pct(r["fire_rate"]), r["n_tokens"]] for r in rows],
                           hovertemplate=("%{x}: mean score %{y:.4g}<br>share of profile %{customdata[0]}<br>"
                                          "fires on %{customdata[1]} of %{customdata[2]} tokens<extra></extra>")))
    plot_layout(fig, "Mean routing score per label (zeros included)", 300)
    body = "".join(
        f'<tr><td>{esc(r["label"])}</td>{num_cell(r["mean_score"], fmt(r["mean_score"]))}'
        f'{num_cell(r["share"], pct(r["share"]))}{num_cell(r["fire_rate"], pct(r["fire_rate"]))}'
        f'{num_cell(r["n_tokens"], format(r["n_tokens"], ","))}</tr>' for r in rows)
    lab = page["label"]
    verdict = (f'2x rule: specialised in <span class="badge lab">{esc(lab["label"])}</span>' if lab["label"]
               else "2x rule: not specialised (top label below twice the second)")
    return (f'<section id="labels"><h2>Label distribution</h2>{plot_div(fig, "plot-labels")}'
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
    return (f'<section id="ablation"><h2>Ablation effect</h2><p class="small muted">Pruned exactly with '
            f'<code>ExpertEdit({a["edit"]["i"]}, {a["edit"]["j"]}, "prune", group={a["edit"]["group"]})</code> '
            f'(every layer of the routing group, all heads, no renormalisation); \u0394loss = pruned \u2212 clean '
            f'next-token loss in nats on {where}. "At top positions": the prediction made at the expert\'s peak.</p>'
            f'<div class="facts">{fact_cards(facts)}</div></section>')


def _neighbour_table(rows: Sequence[Mapping[str, Any]], axis: str) -> str:
    body = []
    for r in rows:
        name = f'({r["i"]}, {r["j"]})'
        link = f'<a href="{esc(page_filename(r["slug"]))}">{name}</a>' if r["built"] else name
        label = f'<span class="badge lab">{esc(r["label"])}</span>' if r["label"] else '<span class="muted">none</span>'
        body.append(f'<tr><td>{link}</td>{num_cell(r["flat"])}{num_cell(r["coactivation"], pct(r["coactivation"]))}'
                    f'{num_cell(r["jaccard"], fmt(r["jaccard"], 3))}{num_cell(r["density"], pct(r["density"]))}'
                    f'<td>{label}</td></tr>')
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
    return html_page(f"Expert ({ref['i']}, {ref['j']}) of group {ref['group']}", body, plotly)


__all__ = ["PAGE_SECTIONS", "render_expert_page", "render_tokens"]
