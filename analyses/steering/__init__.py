"""Steering with experts: expert boosting, top-1 replacement, SAE features and DiffMean, compared.

Four ways to push generation toward a concept c (a code language or a text domain), each a
context manager that stays active during ``model.generate`` (KV cache, every step):

``monet``     raise the weight of chosen experts with the edit API (``ExpertEdit`` ops "add" or
              "set", summed over heads or per listed head), on every layer of the expert's routing
              group (or one layer). Experts chosen by label skew of their routing score
              (``selection="skew"``) or by attribution (``selection="attribution"``).
              alpha: the weight added ("add": s += alpha) or set ("set": s := alpha).
``top1``      in a top-1 routed model, replace the expert of chosen heads with the target expert:
              a hook on ``hook_g_row`` / ``hook_g_col`` of the group's layers moves each chosen
              head's single non-zero entry to the target index. alpha scales the kept gate value
              (``gate="keep"``: new weight = alpha * g_row * g_col) or is the new weight
              (``gate="set"``).
``sae``       add alpha * sum_k a_k d_k at ``blocks.{l}.hook_mlp_out`` (d_k an SAE decoder row, a_k
              the feature's mean activation on concept tokens where it fires), features chosen by
              label skew of their mean activation. The SAE reconstruction is never spliced in, so
              the error term is kept: x' = x + alpha a_k d_k = Dec(f') + (x - Dec(f)).
``diffmean``  add alpha * (mean activation on concept text - mean on other text) at the MLP output
              (or residual stream) of chosen layers.
``steermoe``  SteerMoE-style (Fayyaz et al. 2025) router steering: before routing, set the raw
              router logits of chosen experts alpha above the logit at which their selection score
              (selection bias and normalisation included) ties the head's best (activate), or alpha
              below the one where it ties the head's worst and the threshold (deactivate), at
              ``hook_router_logits_row/_col`` of each group's router layer, so the router itself selects (or drops) them and g follows
              from its softmax; experts are chosen per head as for ``top1``. In a product-key
              MONET expert (i, j) of head h is row i and column j, so deactivating it drops every
              expert of row i and column j of that head (the factors cannot single out one pair).

alpha = 0 is "no intervention" for every method (also for "set", which would otherwise prune).
The interventions themselves are core API (:mod:`monet_interp.editing.interventions`,
:mod:`monet_interp.editing.router_steering`); this package chooses their units and evaluates them.

Evaluation (:func:`run_steering`): prompts are held-out windows of *other* labels (default: the
other evaluation labels of the same kind, e.g. C code steered toward Python); each method is run
over a shared alpha grid; metrics are in :mod:`.metrics` (concept score from an offline
character n-gram classifier trained on held-out text, change in log-prob of the concept's
characteristic tokens, fluency vs the unsteered generation, distinct-2, token KL on unrelated
held-out text, steerability slope and wrong-way share). alpha is chosen per (model, method,
concept) on the even prompts by the strict harmonic mean of normalised concept score and fluency
and reported on the odd prompts. :class:`SteeringResult` holds pandas tables, plotly figures and an
HTML fragment.

Data splits: selection statistics and characteristic tokens from ``train``; the classifier from
``val``; prompts, classifier accuracy and KL text from ``test``.

Modules: config (SteeringConfig), models (model kinds, loading, SAE adapter), label_stats (the
statistics pass), selection (units per method), methods (the intervention of each method),
texts (windows, classifier), evaluation (generation and scores), runner (run_steering), result
(SteeringResult, summarise), render (markdown, figures, HTML), metrics (the offline metrics).
"""

from monet_interp.analyses.steering.config import DEFAULT_CONCEPTS, METHODS, SteeringConfig
from monet_interp.analyses.steering.label_stats import LabelStats, collect_label_stats
from monet_interp.analyses.steering.models import (
    find_sae_trainer,
    is_monet,
    is_top1,
    model_name,
    resolve_models,
    sae_decoder,
    sae_encode,
)
from monet_interp.analyses.steering.result import SteeringResult, summarise
from monet_interp.analyses.steering.runner import run_steering
from monet_interp.analyses.steering.selection import (
    diffmean_vectors,
    select_monet_experts,
    select_monet_experts_by_attribution,
    select_sae_features,
    select_top1_targets,
)
from monet_interp.analyses.steering.texts import text_chunks, text_windows, train_classifier

__all__ = [
    "DEFAULT_CONCEPTS", "LabelStats", "METHODS", "SteeringConfig", "SteeringResult", "collect_label_stats",
    "diffmean_vectors", "find_sae_trainer", "is_monet", "is_top1", "model_name", "resolve_models", "run_steering",
    "sae_decoder", "sae_encode", "select_monet_experts", "select_monet_experts_by_attribution",
    "select_sae_features", "select_top1_targets", "summarise", "text_chunks", "text_windows", "train_classifier",
]
