"""Model helpers of the steering analysis: kinds, names, loading, and the SAE adapter."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from monet_interp.activation_cache import is_moe as is_monet
from monet_interp.units import model_name


def is_top1(model: Any) -> bool:
    return is_monet(model) and getattr(model.cfg, "moe_routing", "threshold") == "top1"


def hook_name(layer: int, site: str) -> str:
    """``blocks.{layer}.hook_{site}`` for a residual / MLP-output site."""
    if site not in ("mlp_out", "resid_post", "resid_mid", "resid_pre"):
        raise ValueError(f"unknown site {site!r}; use 'mlp_out', 'resid_pre', 'resid_mid' or 'resid_post'")
    return f"blocks.{layer}.hook_{site}"


def resolve_models(models: Any) -> dict[str, Any]:
    """{name: model} from a model, a name/path, a list of them or a mapping (names and paths are
    loaded with ``monet_interp.load_model``; unnamed models are named after their checkpoint)."""
    if isinstance(models, Mapping):
        return {str(k): (_load(v) if isinstance(v, (str, Path)) else v) for k, v in models.items()}
    if isinstance(models, (str, Path)) or hasattr(models, "cfg"):
        models = [models]
    out: dict[str, Any] = {}
    for k, m in enumerate(models):
        model = _load(m) if isinstance(m, (str, Path)) else m
        name = str(m) if isinstance(m, (str, Path)) else model_name(model)
        if name in out:
            name = f"{name}#{k}"
        out[name] = model
    return out


def _load(name: str | Path) -> Any:
    from monet_interp.loading import load_model

    return load_model(name)


def sae_encode(sae: Any, x: Tensor) -> Tensor:
    """Feature activations: ``sae.encode(x)`` (SAELens) or relu((x - b_dec) W_enc + b_enc)."""
    if hasattr(sae, "encode"):
        return sae.encode(x)
    return torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)


def sae_decoder(sae: Any) -> Tensor:
    """Decoder directions [n_features, d] (SAELens ``W_dec``)."""
    return sae.W_dec


def find_sae_trainer() -> Callable | None:
    """trainer(model, corpus, layers=[...], **kwargs) -> {layer: sae}, wrapping
    ``monet_interp.analyses.baselines.train_saes`` (TopK SAEs trained with SAELens on
    ``blocks.{l}.hook_mlp_out``); None when that module is not available."""
    try:
        from monet_interp.analyses.baselines import train_saes
    except Exception:
        return None

    def trainer(model: Any, corpus: Any, layers: Sequence[int], **kwargs: Any) -> dict[int, Any]:
        return dict(train_saes(model, corpus, layers=list(layers), **kwargs).saes)

    return trainer


__all__ = ["find_sae_trainer", "hook_name", "is_monet", "is_top1", "model_name", "resolve_models", "sae_decoder",
           "sae_encode"]
