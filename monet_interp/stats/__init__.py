"""Corpus statistics: routing statistics of every MONET expert, and activation statistics of any
unit set (experts, dense-MLP neurons, SAE features), in one streaming, data-parallel pass.

    from monet_interp.stats import compute_routing_stats, RoutingStats
    stats = compute_routing_stats(model, corpus, split="val")
    stats.mean_score()            # [label, group, E, E]
    stats.save("runs/routing"); RoutingStats.load("runs/routing", model=model, corpus=corpus)

    from monet_interp.stats import compute_unit_stats, dense_neurons
    neurons = compute_unit_stats(dense, corpus, dense_neurons(dense, layer=1))
    experts = stats.units(group=0)   # the same UnitStats interface for experts
"""

from monet_interp.stats.routing_stats import (
    CorpusLike,
    RoutingStats,
    StatsError,
    StatsMetadataError,
    TokenClassifier,
    WindowPlan,
    compute_routing_stats,
    corpus_fingerprint,
    merge_topk,
    model_fingerprint,
    plan_windows,
    sparse_expert_scores,
)
from monet_interp.stats.units import (
    HookUnits,
    MonetExpertUnits,
    UnitSet,
    UnitStats,
    compute_unit_stats,
    dense_neurons,
    sae_features,
    unit_stats_from_routing,
)

__all__ = [
    "CorpusLike", "HookUnits", "MonetExpertUnits", "RoutingStats", "StatsError", "StatsMetadataError",
    "TokenClassifier", "UnitSet", "UnitStats", "WindowPlan", "compute_routing_stats", "compute_unit_stats",
    "corpus_fingerprint", "dense_neurons", "merge_topk", "model_fingerprint", "plan_windows", "sae_features",
    "sparse_expert_scores", "unit_stats_from_routing",
]
