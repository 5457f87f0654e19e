"""Expert activation reports (one HTML dashboard per MONET expert: its data, then its rendering)
and the main report (:func:`main.run_report`: routing statistics, monosemanticity, expert pages,
unlearning and steering in one HTML report).

An expert is ``ExpertRef(group, i, j)``: bottom/left half i and top/right half j of routing group
``group``. Its routing score on token t is the paper's

    s(t) = sum_h g_row[t, h, i] * g_col[t, h, j]          (in [0, H])

read from ``blocks.{l}.moe.hook_g_row / hook_g_col`` of the group's first layer (every layer of a
group uses the same factors). It *fires* on t when s(t) > ``fire_threshold`` (0.01 by default,
the default of ``monet_interp.stats.compute_routing_stats``). Nothing here expands the E^2
experts: scores of the chosen experts are gathered columns of g, and their row/column
neighbours one [tokens, E] product each.

Pipeline of the expert pages (steps 1-3 return plain data; only step 4 renders):

1. :func:`plan_report_windows`: documents and windows exactly as the routing statistics plan
   them (``monet_interp.stats.plan_windows``: windows of ``ctx_len`` tokens cut from each
   [bos, ..., eos] document; bos/eos run but are not counted), from a built corpus, a
   ``<label>/*.txt`` folder or a ``{label: [text]}`` mapping (``monet_interp.data.open_corpus``). Hence densities and per-label
   means here equal those of ``compute_routing_stats`` on the same corpus and settings.
2. :func:`collect_expert_stats`: one streaming pass (the model runs only up to the first layer of
   the deepest requested group) for the chosen experts: firing count, density, score sum and max,
   per-head routing mass, per-label sums, an exact fine histogram, the top-k windows (each
   window's best position, so the top contexts are k different windows), a uniform sample of
   firing tokens (bottom-k random keys; exact when fewer than ``sample_cap`` fire) for the
   interval groups, and co-activation with the 2(E-1) experts sharing row i or column j.
3. :func:`build_expert_page`: reruns the model on the windows it shows (top contexts and interval
   examples) to colour each token by s(t) with its per-head split, computes the logit effects
   and the ablation effect (exact pruning through ``model.edit_experts``), and returns one
   JSON-ready dict per expert. :func:`build_report_data` does steps 2-3 for a list of experts.
   :func:`select_top_per_label` picks experts from a ``RoutingStats`` (``routing_stats_for``).
4. :func:`write_report`: the index (:func:`render_index`), one page per expert
   (:func:`render_expert_page`, sections ``PAGE_SECTIONS``) and its JSON data, self-contained HTML.

Choices (also shown in the report):

- Logit effects: the expert's output direction is E_ij(x) averaged over the MoE inputs x at its
  top-context positions (one position per top window), for each layer l of the routing group
  with that layer's weights; HD: V_j mean(relu2(U_i x + c_i)) + b_j; VD: the two halves
  [V11_i mean(a_i) + V12_i mean(a'_j) + b1_i ; V21_j mean(a_i) + V22_j mean(a'_j) + b2_j]. The
  mean is unweighted (E_ij is the expert's output per unit routing weight). The report's main
  table uses the sum over the group's layers (what pruning the expert removes, per unit weight),
  mapped to the vocabulary by W_U directly: ln_final is not applied (its gain is not folded in).
- Ablation: ``ExpertEdit(i, j, "prune", group=g)`` (every layer of the group, all heads, exact,
  no renormalisation); Delta loss = pruned - clean next-token loss (nats) on the top-context
  windows, (a) the mean over every predicted position of those windows, (b) the mean over the
  predictions made at the top positions (token p+1 predicted at the expert's peak p). An expert
  that never fired has no top contexts: it is measured on the first ``fallback_windows`` corpus
  windows instead (and (b) is None), so its zero is a measurement, not a convention.
- Label: the MONET 2x rule on per-label mean scores (mean over all counted tokens of the label,
  zeros included), via ``monet_interp.analyses.monosemanticity.label_metrics``.

Modules: experts (ExpertRef, checks, defaults), windows (documents, windows, padded batches),
expert_stats (the statistics pass), pages (page data), data (report data, choosing experts),
html_base (page shell, CSS/JS, formatting) / html_expert (one expert's page) / html_index (the
index, writing a report), main (the main report: ``run_report``, sections ``REPORT_SECTIONS``; not
re-exported here). CLI: ``monet-interp experts`` (monet_interp.analyses.cli.experts, expert
pages), ``monet-interp report`` (cli.report, the main report); ``monet-interp edit`` (cli.edit)
uses the split and label checks.
"""

from monet_interp.analyses.report.data import build_report_data, index_row, routing_stats_for, select_top_per_label
from monet_interp.analyses.report.expert_stats import ExpertStats, collect_expert_stats, histogram, label_summary
from monet_interp.analyses.report.experts import (
    DEFAULT_CTX_LEN,
    DEFAULT_FIRE_THRESHOLD,
    DEFAULT_TOP_K,
    ExpertRef,
    ReportError,
    check_experts,
    first_layer,
)
from monet_interp.analyses.report.html_base import PLOTLY_ASSET
from monet_interp.analyses.report.html_expert import PAGE_SECTIONS, render_expert_page, render_tokens
from monet_interp.analyses.report.html_index import render_index, write_report
from monet_interp.analyses.report.pages import build_expert_page, expert_direction, logit_effects, pruned_nll, rerun_windows
from monet_interp.analyses.report.windows import Document, Window, check_labels, plan_report_windows, resolve_split

__all__ = [
    "DEFAULT_CTX_LEN", "DEFAULT_FIRE_THRESHOLD", "DEFAULT_TOP_K", "Document", "ExpertRef", "ExpertStats",
    "PAGE_SECTIONS", "PLOTLY_ASSET", "ReportError", "Window", "build_expert_page", "build_report_data",
    "check_experts", "check_labels", "collect_expert_stats", "expert_direction", "first_layer", "histogram",
    "index_row", "label_summary", "logit_effects", "plan_report_windows", "pruned_nll", "render_expert_page",
    "render_index", "render_tokens", "rerun_windows", "resolve_split", "routing_stats_for", "select_top_per_label",
    "write_report",
]
