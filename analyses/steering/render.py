"""Rendering a steering result: README markdown tables, plotly figures, example generations and
the HTML report section (``SteeringResult.markdown/figures/examples/html_section`` call these)."""

from __future__ import annotations

import html
import math
from typing import Any

from monet_interp.analyses.steering.result import SteeringResult


def markdown(result: SteeringResult, digits: int = 2) -> str:
    """Markdown tables for a README: per (model, method) means over concepts and concepts won;
    harmonic mean per concept x (model, method); concept score / fluency / harmonic / KL of every
    cell (in a <details> block); and the success-vs-fluency curves (all prompts, mean over
    concepts) over the alpha grid."""
    s = result.summary
    col = lambda m, meth: f"{m} / {meth}"  # noqa: E731
    winners = result.winners()
    won = {}
    for row in winners.itertuples():
        if row.harmonic > 0:
            for meth in row.winner.split("/"):
                won[(row.model, meth)] = won.get((row.model, meth), 0) + 1
    fmt = f"{{:.{digits}f}}".format
    lines = ["| model / method | concepts | concept score | dlogp | fluency | harmonic | KL | slope | wrong way "
             "| concepts won |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (model, method), grp in s.groupby(["model", "method"], sort=False):
        avg = grp[["concept_score", "dlogp", "fluency", "harmonic", "kl", "slope"]].mean()
        lines.append(f"| {col(model, method)} | {len(grp)} | "
                     + " | ".join(fmt(avg[c]) for c in avg.index)
                     + f" | {grp['wrong_way'].mean():.0%} | {won.get((model, method), 0)} |")
    pairs = list(dict.fromkeys(zip(s["model"], s["method"])))
    concepts = list(dict.fromkeys(s["concept"]))
    cell = {(r.model, r.method, r.concept): r for r in s.itertuples()}
    header = "| concept | " + " | ".join(col(m, meth) for m, meth in pairs) + " |"
    rule = "|---" * (len(pairs) + 1) + "|"
    harmonic = [header, rule]
    detail = [header, rule]
    for c in concepts:
        best = {m: max((cell[(m2, meth, c)].harmonic for m2, meth in pairs
                        if m2 == m and (m2, meth, c) in cell), default=0) for m, _ in pairs}
        h_row, d_row = [c], [c]
        for m, meth in pairs:
            r = cell.get((m, meth, c))
            if r is None:
                h_row.append("-")
                d_row.append("-")
                continue
            h = fmt(r.harmonic)
            h_row.append(f"**{h}**" if h == fmt(best[m]) and best[m] > 0 else h)  # ties as printed
            d_row.append(f"{fmt(r.concept_score)} / {fmt(r.fluency)} / {fmt(r.harmonic)} / {fmt(r.kl)}")
        harmonic.append("| " + " | ".join(h_row) + " |")
        detail.append("| " + " | ".join(d_row) + " |")
    curves = result.curves[result.curves["half"] == "all"]
    mean = curves.groupby(["model", "method", "alpha"], sort=False)[["concept_score", "fluency"]].mean()
    alphas = sorted(curves["alpha"].unique())
    curve = ["| model / method | " + " | ".join(f"alpha {a:g}" for a in alphas) + " |",
             "|---" * (len(alphas) + 1) + "|"]
    for m, meth in pairs:
        vals = [f"{fmt(mean.loc[(m, meth, a), 'concept_score'])} / {fmt(mean.loc[(m, meth, a), 'fluency'])}"
                if (m, meth, a) in mean.index else "-" for a in alphas]
        curve.append(f"| {col(m, meth)} | " + " | ".join(vals) + " |")
    return "\n".join([
        "Means over concepts (report half, each cell at its alpha chosen on the select half; slope and "
        "wrong way over all prompts):", "",
        *lines, "", "Harmonic mean per concept (each model's best method in bold, ties as printed):", "", *harmonic, "",
        "<details><summary>Concept score / fluency / harmonic / KL per cell</summary>", "", *detail, "",
        "</details>", "",
        "Success vs fluency over the alpha grid (concept score / fluency, all prompts, mean over concepts):", "",
        *curve])


def figures(result: SteeringResult) -> dict[str, Any]:
    """plotly figures: success-vs-coherence curves (concept score vs fluency and vs KL over the
    alpha grid, all prompts) and the harmonic mean vs alpha."""
    import plotly.express as px

    curves = result.curves[result.curves["half"] == "all"].copy()
    curves["model/method"] = curves["model"] + " / " + curves["method"]
    figs = {}
    common = dict(color="model/method", facet_col="concept", facet_col_wrap=4, markers=True,
                  hover_data=["alpha", "kl", "dlogp"])
    figs["success_vs_fluency"] = px.line(curves.sort_values("alpha"), x="fluency", y="concept_score",
                                         title="Steering: concept score vs fluency over the alpha grid",
                                         **common)
    figs["success_vs_kl"] = px.line(curves.sort_values("alpha"), x="kl", y="concept_score",
                                    title="Steering: concept score vs side-effect KL", **common)
    figs["harmonic_vs_alpha"] = px.line(curves.sort_values("alpha"), x="alpha", y="harmonic",
                                        title="Harmonic mean of normalised concept score and fluency",
                                        **common)
    for fig in figs.values():
        fig.update_layout(height=300 * max(1, math.ceil(curves["concept"].nunique() / 4)) + 120)
    return figs


def examples(result: SteeringResult, per_concept: int = 1) -> Any:
    """Report-half example generations: prompt, unsteered, each method at its chosen alpha."""
    import pandas as pd

    gens, rows = result.generations, []
    chosen = {(r.model, r.method, r.concept): r.alpha for r in result.summary.itertuples()}
    for (model, concept), grp in gens[gens["half"] == "report"].groupby(["model", "concept"], sort=False):
        for idx in sorted(grp["prompt_idx"].unique())[:per_concept]:
            sub = grp[grp["prompt_idx"] == idx]
            base = sub[sub["alpha"] == 0.0].iloc[0]
            row = {"model": model, "concept": concept, "source": base["source"], "prompt": base["prompt"],
                   "unsteered": f"[classified {base['predicted']}] {base['generation']}"}
            for method in sub["method"].unique():
                a = chosen.get((model, method, concept))
                hit = sub[(sub["method"] == method) & (sub["alpha"] == a)]
                if a is not None and len(hit):
                    row[method] = f"[alpha={a:g}, classified {hit.iloc[0]['predicted']}] {hit.iloc[0]['generation']}"
            rows.append(row)
    return pd.DataFrame(rows)


def html_section(result: SteeringResult, include_plotlyjs: bool | str = False, max_examples: int = 12) -> str:
    """An HTML fragment (a <section>) for a report: setup, tables, curves, examples.

    include_plotlyjs: False when the page already loads plotly.js, "cdn" or True otherwise."""
    esc = html.escape
    cfg = result.config
    parts = ['<section id="steering">', "<h2>Steering: experts vs SAE features vs DiffMean</h2>"]
    parts.append(
        "<p>Prompts are held-out windows of <em>other</em> labels; each method pushes toward the target concept "
        f"over the alpha grid {esc(str(cfg.get('alphas')))} ({cfg.get('n_prompts')} prompts per concept, "
        f"{cfg.get('prompt_tokens')} prompt tokens, {cfg.get('max_new_tokens')} generated tokens, KV cache on). "
        "Concept score: share of generations an offline character n-gram naive Bayes classifier (trained on the "
        f"val split; test accuracy {result.classifier_accuracy:.3f}) assigns to the target (a generation with fewer "
        f"than {cfg.get('min_alnum_chars')} letters/digits counts as no concept). Fluency: "
        "exp(-max(0, logPPL<sub>0</sub>(gen<sub>a</sub>) - logPPL<sub>0</sub>(gen<sub>0</sub>))) under the "
        "unsteered model. Harmonic: strict harmonic mean of the normalised concept gain and fluency; alpha "
        "chosen on the even prompts, reported on the odd ones. KL: mean token KL(p<sub>0</sub> || "
        "p<sub>a</sub>) on unrelated held-out text. dlogp: change of log P(next token is one of the concept's "
        "characteristic tokens). Slope / wrong way: steerability of dlogp over the grid.</p>")
    parts.append("<h3>Harmonic mean (report half), methods x concepts</h3>")
    parts.append(result.table("harmonic").round(3).to_html(na_rep="-"))
    parts.append("<h3>Concept score, fluency and KL at the chosen alpha</h3>")
    for metric in ("concept_score", "fluency", "kl"):
        parts.append(f"<h4>{esc(metric)}</h4>")
        parts.append(result.table(metric).round(3).to_html(na_rep="-"))
    parts.append("<h3>Mean over concepts</h3>")
    parts.append(result.overview().to_html(na_rep="-"))
    parts.append("<h3>Best method per concept</h3>")
    parts.append(result.winners().round(3).to_html(index=False, na_rep="-"))
    figs = result.figures()
    first = True
    for fig in figs.values():
        parts.append(fig.to_html(full_html=False, include_plotlyjs=include_plotlyjs if first else False))
        first = False
    ex = result.examples()
    if len(ex):
        parts.append("<h3>Example generations (report half, chosen alpha)</h3>")
        for row in ex.head(max_examples).to_dict("records"):
            parts.append(f"<h4>{esc(row.pop('model'))}: toward {esc(row.pop('concept'))} "
                         f"(prompt from {esc(row.pop('source'))})</h4><table class=\"steer-examples\">")
            for key, value in row.items():
                if not isinstance(value, str):  # a method this model does not have
                    continue
                parts.append(f"<tr><th>{esc(key)}</th><td><pre>{esc(str(value))}</pre></td></tr>")
            parts.append("</table>")
    if result.notes:
        parts.append("<h3>Notes</h3><ul>" + "".join(f"<li>{esc(n)}</li>" for n in result.notes) + "</ul>")
    parts.append("</section>")
    return "\n".join(parts)


__all__ = ["examples", "figures", "html_section", "markdown"]
