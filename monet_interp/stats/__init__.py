"""Corpus statistics: routing statistics of every MONET expert, and activation statistics of any
unit set (experts, dense-MLP neurons, SAE features: ``monet_interp.units``), in one streaming,
data-parallel pass; per-label statistics of unit sets over token windows.

    from monet_interp.stats import compute_routing_stats, RoutingStats
    stats = compute_routing_stats(model, corpus, split="val")
    stats.mean_score()            # [label, group, E, E]
    stats.save("runs/routing"); RoutingStats.load("runs/routing", model=model, corpus=corpus)

    from monet_interp.stats import compute_unit_stats, label_statistics
    from monet_interp.units import dense_neurons
    neurons = compute_unit_stats(dense, corpus, dense_neurons(dense, layer=1))
    experts = stats.units(group=0)   # the same UnitStats interface for experts
    per_label = label_statistics(model, units, {"python": windows, ...})   # mean / freq [labels, units]

Layers (each module imports only those before it): ``collectives`` (all_reduce, all_gather, local
process groups), ``fingerprint`` -> ``stream`` (windows, batches, token classes, the sample) ->
``topk``, ``storage`` -> ``corpus_pass`` (the one streaming pass: setup, driver, accumulator base)
-> ``unit_stats``, ``routing_stats`` (the result types) -> ``routing`` (the routing accumulator)
-> ``units`` (the unit-statistics accumulator); ``labels`` (per-label statistics over windows).
``distributed`` is the torchrun entry point and is imported by nothing.
"""

from monet_interp.stats.labels import LabelStatistics, label_statistics, window_statistics
from monet_interp.stats.fingerprint import corpus_fingerprint, model_fingerprint
from monet_interp.stats.routing import compute_routing_stats, sparse_expert_scores
from monet_interp.stats.routing_stats import RoutingStats
from monet_interp.stats.storage import StatsMetadataError
from monet_interp.stats.stream import CorpusLike, StatsError, TokenClassifier, WindowPlan, plan_windows
from monet_interp.stats.topk import merge_topk
from monet_interp.stats.unit_stats import UnitStats, share_over_labels, unit_stats_from_routing
from monet_interp.stats.units import compute_unit_stats

__all__ = [
    "CorpusLike", "LabelStatistics", "RoutingStats", "StatsError", "StatsMetadataError", "TokenClassifier",
    "UnitStats", "WindowPlan", "compute_routing_stats", "compute_unit_stats", "corpus_fingerprint",
    "label_statistics", "merge_topk", "model_fingerprint", "plan_windows", "share_over_labels", "sparse_expert_scores",
    "unit_stats_from_routing", "window_statistics",
]
