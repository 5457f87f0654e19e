"""Unlearning by deleting units: MONET experts against fair baselines, on held-out text per label.

    from monet_interp.analyses.unlearning import run_unlearning, default_methods
    result = run_unlearning(model, corpus, forget=["python", "news_sport"], methods=["2x", "ratio", "random"])
    result.summary                      # one row per (method, forgotten label): dTarget, dOthers, ...
    result.table("MONET 2x")            # paper layout: rows = forgotten label, columns = every label
    html = result.html_section()        # self-contained HTML fragment (tables + plotly figures)

What is removed (a *unit set*, :class:`monet_interp.units.Unit`):

- :class:`monet_interp.units.ExpertUnits`: MONET experts (i, j), pruned exactly through the edit API
  (``model.edit_experts``). Scope: ``scope="group"`` (default; expert (i, j) of routing group g,
  removed on every layer of the group, which all share its routing) or ``scope="layer"`` (one
  layer); ``heads="all"`` (default; the head-summed weight) or ``heads="per-head"`` (unit = one
  head's weight g1[h,i] g2[h,j]).
- :class:`monet_interp.units.NeuronUnits` (dense MLP neurons, zeroed) and
  :class:`monet_interp.units.SAEUnits` (SAE features on MLP outputs, trained by
  ``monet_interp.analyses.baselines.train_saes``: negative clamping with the SAE error term kept;
  or the spliced reconstruction).

How units are chosen (``rule``), from per-label statistics I(D, u) over training-split text
(I = mean activation, for experts the mean routing score r_e(D) = mean_t sum_h g1 g2, or firing
frequency; ``statistic="mean" | "freq"``):

- ``"2x"``: MONET's rule. u is specialised in the forget label F iff I(F, u) > 0 and
  I(F, u) >= 2 * max over every other label D of I(D, u). All such units are removed (optionally,
  ``twox_prefixes``, a curve over prefixes ordered by the skew I(F) / max_D I(D) is measured too).
- ``"ratio"``: selective pruning (Pochinkov & Schoots 2024): score(u) = I(F, u) / (I(R, u) + eps)
  with I(R) the mean over the retain labels (every other label, equal weight) and
  eps = ratio_eps * mean_u I(R, u) (scale-free). The top fraction of all units is removed; the
  curve runs over ``fractions``.
- ``"ratio-iter"``: the same score, removing ``iter_step`` of the units per step and recomputing the
  statistics with the units removed so far already removed (``iter_steps`` steps).
- ``"random"``: uniformly random units, as many as another method removed for the same label
  (``match``; by default the first non-random method on the same unit set) - the control.
- ``"same"``: exactly the units another method (``match``) removed, on a unit set with the same
  ids - e.g. the same SAE features with the reconstruction spliced in instead of the error term
  kept, which isolates what splicing costs.

Metrics (every label, held-out text; accuracies in percentage points, loss in bits per byte):
next-token top-1 / top-10 accuracy, optionally skipping targets among the label's 50 most common
training tokens (``*_skip`` columns), and bits per byte = summed next-token loss (nats) / ln 2 /
UTF-8 bytes of the predicted tokens (exact per-token byte lengths from the corpus tokenizer; or,
without one, the split's bytes per predicted token from the corpus manifest). bos is never a
target. Token budgets per label are bounded (parameters), evaluation is batched under no_grad.
Every delta is measured against the *clean* model (no hook, no edit), so a method that costs
something before any unit is removed (a spliced SAE reconstruction) pays for it.

Protocol: statistics on ``stat_split`` ("train"), curves and the choice of the operating point on
``select_split`` ("val"), the reported numbers (tables, summary) on ``eval_split`` ("test").
The operating point of a curve method is the point with the largest forget top-1 drop whose
retain top-1 drop is <= ``retain_budget`` points (1.0); the 2x rule's point is its full set; a
random control's point is the count of the method it matches. The forgotten label is measured on
more tokens (``eval_forget_tokens``) than each other label (``eval_tokens``); dOthers averages
over many labels, so it needs fewer per label.

Summary columns (per method and forgotten label): ``d_target_*`` (change on the forgotten label),
``d_others_*`` (mean change over every other label), ``d_others_same_kind_*`` (other labels of
the same kind, code or natural), ``selectivity_*`` = d_target - d_others. Accuracy deltas are
negative when accuracy drops; bits-per-byte deltas are positive when the loss rises.
"""

from __future__ import annotations

from monet_interp.analyses.unlearning.config import (DEFAULT_FRACTIONS, METRICS, RULES, STATISTICS, UnlearningConfig,
                                                     UnlearningError, resolve_labels)
from monet_interp.analyses.unlearning.methods import Method, default_methods, expert_methods, resolve_methods
from monet_interp.analyses.unlearning.render import render_html_section
from monet_interp.analyses.unlearning.result import UnlearningResult
from monet_interp.analyses.unlearning.rules import (budget_point, rank_units, ratio_scores, refine_target, select_2x,
                                                    select_random, select_ratio, skew_2x)
from monet_interp.analyses.unlearning.runner import run_unlearning

# Layout: config (names, UnlearningConfig, label specs) -> rules (selection) -> methods -> sweep
# (windows, clean metrics, statistics through monet_interp.stats.label_statistics) -> runner
# (run_unlearning) -> result (UnlearningResult) -> render (HTML). Evaluation is core:
# monet_interp.evaluation.

__all__ = [
    "DEFAULT_FRACTIONS", "METRICS", "Method", "RULES", "STATISTICS", "UnlearningConfig", "UnlearningError",
    "UnlearningResult", "budget_point", "default_methods", "expert_methods", "rank_units", "ratio_scores",
    "refine_target", "render_html_section", "resolve_labels", "resolve_methods", "run_unlearning", "select_2x",
    "select_random", "select_ratio", "skew_2x",
]
