"""SteeringConfig: every knob of a steering run, and the method and concept names."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from monet_interp.editing.interventions import BOOST_OPS, TOP1_GATES
from monet_interp.editing.router_steering import MODES as ROUTER_MODES

METHODS = ("monet", "top1", "sae", "diffmean", "steermoe")
DEFAULT_CONCEPTS = ("python", "c", "rust", "shakespeare", "bible_kjv", "news_sport")


@dataclass
class SteeringConfig:
    """Every knob of :func:`run_steering` (defaults sized for a CPU)."""

    alphas: Sequence[float | int] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    n_prompts: int = 8  # per concept; even indices choose alpha, odd ones report
    prompt_tokens: int = 16
    max_new_tokens: int = 24
    prompt_labels: Sequence[str] | None = None  # default: other concepts of the same kind
    do_sample: bool = True
    temperature: float | int = 0.8
    top_k: int | None = 40
    seed: int = 0
    # statistics (train split)
    stat_windows: int = 16
    stat_tokens: int = 128
    char_tokens: int = 20
    # classifier (val split) and its accuracy check (test split)
    classifier_chunks: int = 60
    classifier_chars: int = 300
    classifier_eval_chunks: int = 20
    min_alnum_chars: int = 8  # generations with fewer letters/digits are classified "none"
    # side effects (test split)
    kl_windows: int = 6
    kl_tokens: int = 48
    # MONET expert boosting
    monet_k: int = 4
    monet_op: str = "add"
    monet_groups: Sequence[int] | None = None
    monet_layers: Sequence[int] | None = None
    monet_heads: Sequence[int] | None = None
    monet_selection: str = "skew"  # "skew" (routing statistics) or "attribution"
    rank: str = "usage"  # unit ranking for monet/top1/sae: "usage" (2x rule, most used) or "skew"
    # top-1 replacement
    top1_heads: int = 1
    top1_gate: str = "keep"
    top1_groups: Sequence[int] | None = None
    top1_any_routing: bool = False  # also run "top1" on non-top-1 MONET models
    # SteerMoE-style router-logit steering
    steermoe_heads: int | None = None  # heads per group that get a forced expert (default: every head)
    steermoe_mode: str = "activate"
    steermoe_groups: Sequence[int] | None = None
    # DiffMean
    diffmean_site: str = "mlp_out"
    diffmean_layers: Sequence[int] | None = None  # default: every layer
    # SAE
    sae_layers: Sequence[int] | None = None  # default: the middle layer
    sae_k: int = 4
    sae_scale: str = "diffmean"  # "diffmean": vector norm = DiffMean's at that layer; "activation": sum a_k d_k
    train_saes: bool = True  # train SAEs (baselines.train_saes) for models without given ones
    sae_train_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. steps, expansion, k, tokens_per_label
    batch_size: int = 8

    def __post_init__(self) -> None:
        alphas = sorted({float(a) for a in self.alphas} | {0.0})
        if any(a < 0 for a in alphas):
            raise ValueError(f"alphas must be >= 0, got {alphas}")
        if len(alphas) < 2:
            raise ValueError("the alpha grid needs at least one non-zero factor")
        self.alphas = tuple(alphas)
        if self.n_prompts < 2:
            raise ValueError("n_prompts must be >= 2 (half choose alpha, half report)")
        if self.monet_selection not in ("skew", "attribution"):
            raise ValueError(f"monet_selection must be 'skew' or 'attribution', got {self.monet_selection!r}")
        if self.monet_op not in BOOST_OPS:
            raise ValueError(f"monet_op must be 'add' or 'set', got {self.monet_op!r}")
        if self.rank not in ("usage", "skew"):
            raise ValueError(f"rank must be 'usage' or 'skew', got {self.rank!r}")
        if self.sae_scale not in ("diffmean", "activation"):
            raise ValueError(f"sae_scale must be 'diffmean' or 'activation', got {self.sae_scale!r}")
        if self.top1_gate not in TOP1_GATES:
            raise ValueError(f"top1_gate must be 'keep' or 'set', got {self.top1_gate!r}")
        if self.steermoe_mode not in ROUTER_MODES:
            raise ValueError(f"steermoe_mode must be 'activate' or 'deactivate', got {self.steermoe_mode!r}")

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def config_with(config: SteeringConfig | None, overrides: dict[str, Any]) -> SteeringConfig:
    """``config`` (default SteeringConfig()) with keyword overrides of its fields."""
    from dataclasses import fields

    cfg = config or SteeringConfig()
    if overrides:
        known = {f.name for f in fields(SteeringConfig)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise TypeError(f"unknown steering option(s) {bad}; see SteeringConfig")
        cfg = SteeringConfig(**{**asdict(cfg), **overrides})
    return cfg


__all__ = ["DEFAULT_CONCEPTS", "METHODS", "SteeringConfig", "config_with"]
