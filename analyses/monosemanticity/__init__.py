"""Monosemanticity of any unit set (MONET experts, dense neurons, SAE features) against labels.

Metrics (``/work/shared/reference/evals.md``), per unit u with per-label mean activation r_u(D):

- MONET's 2x rule: u is specialised in its top label D1 iff r_u(D1) >= 2 r_u(D2), D2 the
  second-highest label (``skew`` = r_u(D1) / r_u(D2), inf when only one label is active).
- normalised label entropy H(q_u) / log |labels| with the profile q_u(D) = r_u(D) / sum r_u
  (0 = one label, 1 = uniform) and the specialisation ratio max_D q_u(D) * |labels| (1 = uniform,
  |labels| = one label).
- detection with the document-level maximum s_u(x) = max over x's tokens: AUROC, precision
  P(label = D | s_u > tau), recall P(s_u > tau | label = D), best F1 (over tau).
- the same on code token types (Pygments) at token level (a second, finer axis than language).

All functions take :class:`monet_interp.stats.UnitStats` (``RoutingStats.units(group)`` for
experts, ``compute_unit_stats`` for anything else) or plain arrays, and return pandas DataFrames
or plotly figures. Nothing is printed. Label subsets: ``label_kind="code"`` (languages) or
``"natural"`` (domains), or an explicit list; the 2x rule and the entropies are computed among
the selected labels only.

    experts = [rs.units(g) for g in range(rs.n_groups)]
    table = expert_table(rs, label_kind="code")              # one row per expert of every group
    neurons = monosemanticity_table(neuron_stats, label_kind="code")
    fig = compare_figure({"MONET experts": table, "dense neurons": neurons})
    fig2 = factor_structure_figure(rs, group=0, label_kind="code")

Modules: ``metrics`` (label metrics from per-label means, detection metrics), ``tables`` (one row
per unit; summaries), ``factors`` (the (i, j) factor structure of specialised experts),
``render`` (plotly figures).
"""

from monet_interp.analyses.monosemanticity.factors import factor_label_map, factor_purity
from monet_interp.analyses.monosemanticity.metrics import (
    DEFAULT_RATIO,
    METRIC_TITLES,
    METRICS,
    RankedScores,
    auroc,
    average_ranks,
    best_f1,
    detection_metrics,
    label_metrics,
    normalised_entropy,
    precision_recall_at,
    profile,
    specialisation_ratio,
    two_x_rule,
)
from monet_interp.analyses.monosemanticity.render import (
    compare_figure,
    factor_structure_figure,
    specialisation_share_figure,
)
from monet_interp.analyses.monosemanticity.tables import (
    expert_table,
    monosemanticity_table,
    select_labels,
    specialisation_summary,
    summary_table,
    token_type_table,
)

__all__ = [
    "DEFAULT_RATIO", "METRICS", "METRIC_TITLES", "RankedScores", "auroc", "average_ranks", "best_f1", "compare_figure",
    "detection_metrics", "expert_table", "factor_label_map", "factor_purity", "factor_structure_figure",
    "label_metrics", "monosemanticity_table", "normalised_entropy", "precision_recall_at", "profile", "select_labels",
    "specialisation_ratio", "specialisation_share_figure", "specialisation_summary", "summary_table",
    "token_type_table", "two_x_rule",
]
