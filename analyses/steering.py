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
``steermoe``  SteerMoE-style (Fayyaz et al. 2025) router steering: before routing, force the raw
              router logits of chosen experts up (activate: logit := head max + alpha) or down
              (deactivate: logit := head min - alpha) at ``hook_router_logits_row/_col`` of each
              group's router layer, so the router itself selects (or drops) them and g follows
              from its softmax; experts are chosen per head as for ``top1``. In a product-key
              MONET expert (i, j) of head h is row i and column j, so deactivating it drops every
              expert of row i and column j of that head (the factors cannot single out one pair).

alpha = 0 is "no intervention" for every method (also for "set", which would otherwise prune).

Evaluation (:func:`run_steering`): prompts are held-out windows of *other* labels (default: the
other evaluation labels of the same kind, e.g. C code steered toward Python); each method is run
over a shared alpha grid; metrics are in :mod:`steering_metrics` (concept score from an offline
character n-gram classifier trained on held-out text, change in log-prob of the concept's
characteristic tokens, fluency vs the unsteered generation, distinct-2, token KL on unrelated
held-out text, steerability slope and wrong-way share). alpha is chosen per (model, method,
concept) on the even prompts by the strict harmonic mean of normalised concept score and fluency
and reported on the odd prompts. :class:`SteeringResult` holds pandas tables, plotly figures and an
HTML fragment.

Data splits: selection statistics and characteristic tokens from ``train``; the classifier from
``val``; prompts, classifier accuracy and KL text from ``test``.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from monet_interp.analyses.steering_metrics import (
    NgramNaiveBayes,
    characteristic_tokens,
    distinct_n,
    fluency_score,
    harmonic_mean,
    mean_token_kl,
    normalise_concept,
    set_logprob,
    steerability,
)

METHODS = ("monet", "top1", "sae", "diffmean", "steermoe")
DEFAULT_CONCEPTS = ("python", "c", "rust", "shakespeare", "bible_kjv", "news_sport")


# ============================================================================ model helpers
def is_monet(model: Any) -> bool:
    """True for a HookedMONET (a model with routed experts), False for e.g. a dense baseline."""
    return hasattr(model.cfg, "moe_experts") and hasattr(model.blocks[0], "moe")


def is_top1(model: Any) -> bool:
    return is_monet(model) and getattr(model.cfg, "moe_routing", "threshold") == "top1"


def model_name(model: Any, fallback: str = "model") -> str:
    path = getattr(model, "checkpoint_path", None)
    return Path(path).name if path else fallback


def _hook_name(layer: int, site: str) -> str:
    if site not in ("mlp_out", "resid_post", "resid_mid", "resid_pre"):
        raise ValueError(f"unknown site {site!r}; use 'mlp_out', 'resid_pre', 'resid_mid' or 'resid_post'")
    return f"blocks.{layer}.hook_{site}"


@contextlib.contextmanager
def _with_hooks(model: Any, fwd_hooks: list[tuple[str, Callable]]) -> Iterator[None]:
    if not fwd_hooks:
        yield
        return
    with model.hooks(fwd_hooks=fwd_hooks):
        yield


# ============================================================================ interventions
class Intervention:
    """A steering method bound to its chosen units; ``context(model, alpha)`` applies it."""

    method = "base"

    def context(self, model: Any, alpha: float) -> contextlib.AbstractContextManager:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"method": self.method}


class ExpertBoost(Intervention):
    """Raise the weight of chosen MONET experts with ExpertEdit "add"/"set".

    experts: (group, i, j) triples (every layer of the routing group), or with ``layers`` the
    edits are scoped to those layers instead (each (group, i, j) applied to the layers of
    ``layers`` that belong to its group). heads: None (the summed weight s) or a list of heads
    (each head's w_h). alpha: "add" adds alpha, "set" sets alpha; alpha = 0 attaches nothing.
    """

    method = "monet"

    def __init__(self, experts: Sequence[tuple[int, int, int]], op: str = "add", heads: Sequence[int] | None = None,
                 layers: Sequence[int] | None = None, scores: Sequence[float] | None = None) -> None:
        if op not in ("add", "set"):
            raise ValueError(f"expert steering uses op 'add' or 'set', got {op!r}")
        self.experts = [(int(g), int(i), int(j)) for g, i, j in experts]
        self.op, self.heads = op, (None if heads is None else [int(h) for h in heads])
        self.layers = None if layers is None else [int(l) for l in layers]
        self.scores = None if scores is None else [float(s) for s in scores]

    def edits(self, cfg: Any, alpha: float) -> list[Any]:
        from monet_interp.editing import ExpertEdit

        out = []
        for g, i, j in self.experts:
            if self.layers is None:
                out.append(ExpertEdit(i, j, self.op, float(alpha), group=g, heads=self.heads))
            else:
                for layer in self.layers:
                    if cfg.group_of_layer(layer) == g:
                        out.append(ExpertEdit(i, j, self.op, float(alpha), layer=layer, heads=self.heads))
        return out

    def context(self, model: Any, alpha: float) -> contextlib.AbstractContextManager:
        if alpha == 0 or not self.experts:
            return contextlib.nullcontext()
        return model.edit_experts(self.edits(model.cfg, alpha))

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "op": self.op, "heads": self.heads, "layers": self.layers,
                "experts": [{"group": g, "i": i, "j": j, **({"score": s} if self.scores else {})}
                            for (g, i, j), s in zip(self.experts, self.scores or [None] * len(self.experts))]}


def replace_top1(g: Tensor, targets: Mapping[int, int], value: Tensor | float | None = None,
                 scale: float = 1.0) -> Tensor:
    """Move each listed head's routing mass to one target index: a new tensor, ``g`` untouched.

    g: [..., head, expert] routing factors (g_row or g_col). For head h -> index t in ``targets``
    the head's row becomes zero except entry t, which gets ``value`` (a float or a tensor
    broadcastable to g[..., h]) or, when value is None, ``scale`` times the head's total
    (in a top-1 model the single chosen gate value). Other heads are returned unchanged.
    """
    out = g.clone()
    for head, index in targets.items():
        if value is None:
            new = g[..., head, :].sum(-1) * scale
        else:
            new = torch.as_tensor(value, dtype=g.dtype, device=g.device).expand(g.shape[:-2])
        out[..., head, :] = 0
        out[..., head, index] = new
    return out


class Top1Replace(Intervention):
    """Replace the expert chosen by listed heads with a target expert, on the layers of a group.

    targets: {group: {head: (i, j)}}. gate="keep": the new expert's weight is alpha times the
    weight the head gave its own choice (g_row scaled by alpha, g_col kept); gate="set": the weight
    is alpha (g_row := alpha, g_col := 1). layers: restrict to these layers (default every layer
    of each group). alpha = 0 attaches nothing.
    """

    method = "top1"

    def __init__(self, targets: Mapping[int, Mapping[int, tuple[int, int]]], gate: str = "keep",
                 layers: Sequence[int] | None = None, scores: Mapping[int, Mapping[int, float]] | None = None) -> None:
        if gate not in ("keep", "set"):
            raise ValueError(f"gate must be 'keep' or 'set', got {gate!r}")
        self.targets = {int(g): {int(h): (int(i), int(j)) for h, (i, j) in heads.items()} for g, heads in targets.items()}
        self.gate = gate
        self.layers = None if layers is None else [int(l) for l in layers]
        self.scores = scores

    def hooks(self, cfg: Any, alpha: float) -> list[tuple[str, Callable]]:
        out: list[tuple[str, Callable]] = []
        for group, heads in self.targets.items():
            rows = {h: ij[0] for h, ij in heads.items()}
            cols = {h: ij[1] for h, ij in heads.items()}
            if self.gate == "keep":
                row_kw: dict[str, Any] = {"scale": float(alpha)}
                col_kw: dict[str, Any] = {"scale": 1.0}
            else:
                row_kw, col_kw = {"value": float(alpha)}, {"value": 1.0}

            def row_hook(g, hook, rows=rows, kw=row_kw):
                return replace_top1(g, rows, **kw)

            def col_hook(g, hook, cols=cols, kw=col_kw):
                return replace_top1(g, cols, **kw)

            for layer in cfg.layers_of_group(group):
                if self.layers is not None and layer not in self.layers:
                    continue
                out.append((f"blocks.{layer}.moe.hook_g_row", row_hook))
                out.append((f"blocks.{layer}.moe.hook_g_col", col_hook))
        return out

    def context(self, model: Any, alpha: float) -> contextlib.AbstractContextManager:
        if alpha == 0 or not self.targets:
            return contextlib.nullcontext()
        return _with_hooks(model, self.hooks(model.cfg, alpha))

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "gate": self.gate, "layers": self.layers,
                "targets": [{"group": g, "head": h, "i": i, "j": j,
                             **({"score": float(self.scores[g][h])} if self.scores else {})}
                            for g, heads in self.targets.items() for h, (i, j) in heads.items()]}


def force_router_logits(logits: Float[Tensor, "batch pos head expert"], targets: Mapping[int, Sequence[int]],
                        mode: str = "activate", margin: float = 1.0) -> Float[Tensor, "batch pos head expert"]:
    """Raw router logits with the listed experts of each head forced (a new tensor).

    targets {head: [expert index, ...]} (row indices i on the g1 logits, column indices j on g2's).
    activate: each listed logit := (that head's largest logit at that token) + margin, so the
    router keeps it whatever its rule (threshold, top-k, top-1) and its softmax share grows with
    margin; deactivate: := (the head's smallest logit) - margin, so it is dropped (a head always
    keeps its largest logit, so deactivating every expert of a head is refused)."""
    if mode not in ("activate", "deactivate"):
        raise ValueError(f"mode must be 'activate' or 'deactivate', got {mode!r}")
    out = logits.clone()
    n_exp = logits.shape[-1]
    for head, index in targets.items():
        idx = sorted({int(e) for e in index})
        if not idx:
            continue
        if mode == "deactivate" and len(idx) >= n_exp:
            raise ValueError(f"cannot deactivate all {n_exp} experts of head {head}: routing keeps at least one")
        row = logits[..., head, :]
        bound = row.amax(-1, keepdim=True) + margin if mode == "activate" else row.amin(-1, keepdim=True) - margin
        out[..., head, idx] = bound.expand(*row.shape[:-1], len(idx))
    return out


class RouterLogitSteer(Intervention):
    """SteerMoE baseline: (de)activate experts by forcing router logits before routing.

    targets: {group: {head: (i, j)}} (as :func:`select_top1_targets` returns) or
    {group: {head: [(i, j), ...]}}: row i is forced on the group's g1 logits and column j on its g2
    logits, at the router layer of the group (so every layer of the group routes that way).
    mode "activate" / "deactivate"; alpha is the logit margin above the head's maximum (below its
    minimum). alpha = 0 attaches nothing (the no-intervention convention of this module).
    """

    method = "steermoe"

    def __init__(self, targets: Mapping[int, Mapping[int, Any]], mode: str = "activate",
                 scores: Mapping[int, Mapping[int, float]] | None = None) -> None:
        if mode not in ("activate", "deactivate"):
            raise ValueError(f"mode must be 'activate' or 'deactivate', got {mode!r}")
        self.targets: dict[int, dict[int, list[tuple[int, int]]]] = {}
        for g, heads in targets.items():
            per_head = {}
            for h, experts in heads.items():
                single = len(experts) == 2 and all(isinstance(e, (int, np.integer)) for e in experts)
                pairs = [tuple(experts)] if single else list(experts)
                per_head[int(h)] = [(int(i), int(j)) for i, j in pairs]
            self.targets[int(g)] = per_head
        self.mode, self.scores = mode, scores

    def hooks(self, cfg: Any, alpha: float) -> list[tuple[str, Callable]]:
        out: list[tuple[str, Callable]] = []
        for group, heads in self.targets.items():
            if not 0 <= group < cfg.num_routers:
                raise ValueError(f"routing group {group} does not exist (this model has {cfg.num_routers})")
            layer = cfg.router_layers[group]
            rows = {h: [i for i, _ in pairs] for h, pairs in heads.items()}
            cols = {h: [j for _, j in pairs] for h, pairs in heads.items()}

            def row_hook(logits, hook, rows=rows):
                return force_router_logits(logits, rows, self.mode, float(alpha))

            def col_hook(logits, hook, cols=cols):
                return force_router_logits(logits, cols, self.mode, float(alpha))

            out.append((f"blocks.{layer}.moe.hook_router_logits_row", row_hook))
            out.append((f"blocks.{layer}.moe.hook_router_logits_col", col_hook))
        return out

    def context(self, model: Any, alpha: float) -> contextlib.AbstractContextManager:
        if alpha == 0 or not any(self.targets.values()):
            return contextlib.nullcontext()
        return _with_hooks(model, self.hooks(model.cfg, alpha))

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "mode": self.mode,
                "targets": [{"group": g, "head": h, "i": i, "j": j,
                             **({"score": float(self.scores[g][h])} if self.scores else {})}
                            for g, heads in self.targets.items() for h, pairs in heads.items() for i, j in pairs]}


class AddVector(Intervention):
    """x += alpha * v at each named hook (DiffMean, SAE decoder directions)."""

    method = "vector"

    def __init__(self, vectors: Mapping[str, Tensor], info: dict[str, Any] | None = None,
                 method: str | None = None) -> None:
        self.vectors = {name: v.detach().clone() for name, v in vectors.items()}
        self.info = info or {}
        if method is not None:
            self.method = method

    def hooks(self, alpha: float) -> list[tuple[str, Callable]]:
        def make(vector: Tensor) -> Callable:
            def hook(x, hook):
                return x + float(alpha) * vector.to(device=x.device, dtype=x.dtype)
            return hook

        return [(name, make(v)) for name, v in self.vectors.items()]

    def context(self, model: Any, alpha: float) -> contextlib.AbstractContextManager:
        if alpha == 0 or not self.vectors:
            return contextlib.nullcontext()
        return _with_hooks(model, self.hooks(alpha))

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "hooks": {n: float(v.norm()) for n, v in self.vectors.items()}, **self.info}


# ============================================================================ SAE adapter
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


# ============================================================================ statistics
@dataclass
class LabelStats:
    """Per-label means from one pass over windows of each label (train split).

    routing [n_labels, G, H, E, E]: mean per token of g_row[h,i] g_col[h,j] (summing over heads
    gives the routing score r_e(D) of evals.md); mlp_out / resid_post [n_labels, L, d]: mean
    activations; sae_mean / sae_active_mean {layer: [n_labels, F]}: mean feature activation and
    mean activation where the feature fires.
    """

    labels: list[str]
    n_tokens: list[int]
    mlp_out: Tensor
    resid_post: Tensor
    routing: Tensor | None = None
    sae_mean: dict[int, Tensor] = field(default_factory=dict)
    sae_active_mean: dict[int, Tensor] = field(default_factory=dict)

    def index(self, label: str) -> int:
        return self.labels.index(label)


@torch.no_grad()
def collect_label_stats(model: Any, windows: Mapping[str, Tensor], saes: Mapping[int, Any] | None = None,
                        batch_size: int = 8) -> LabelStats:
    """One forward pass per batch of windows [n, T] of every label, accumulating LabelStats."""
    cfg = model.cfg
    n_layers = cfg.num_hidden_layers
    monet = is_monet(model)
    saes = dict(saes or {})
    names = {f"blocks.{l}.hook_mlp_out" for l in range(n_layers)} | {f"blocks.{l}.hook_resid_post" for l in range(n_layers)}
    if monet:
        for g in range(cfg.num_routers):
            first = cfg.layers_of_group(g)[0]
            names |= {f"blocks.{first}.moe.hook_g_row", f"blocks.{first}.moe.hook_g_col"}
    labels = list(windows)
    mlp = torch.zeros(len(labels), n_layers, cfg.hidden_size, dtype=torch.float64)
    resid = torch.zeros_like(mlp)
    routing = (torch.zeros(len(labels), cfg.num_routers, cfg.moe_heads, cfg.moe_experts, cfg.moe_experts,
                           dtype=torch.float64) if monet else None)
    sae_sum: dict[int, Tensor] = {}
    sae_active_sum: dict[int, Tensor] = {}
    sae_count: dict[int, Tensor] = {}
    counts = []
    for a, label in enumerate(labels):
        toks = windows[label]
        n_tok = 0
        for batch in toks.split(batch_size):
            batch = batch.to(model.device)
            _, cache = model.run_with_cache(batch, names_filter=lambda n: n in names, return_type=None)
            n_tok += batch.numel()
            for l in range(n_layers):
                out = cache[f"blocks.{l}.hook_mlp_out"]
                mlp[a, l] += out.double().sum((0, 1)).cpu()
                resid[a, l] += cache[f"blocks.{l}.hook_resid_post"].double().sum((0, 1)).cpu()
                if l in saes:
                    f = sae_encode(saes[l], out.to(sae_decoder(saes[l]).dtype)).double().flatten(0, 1).cpu()
                    if l not in sae_sum:
                        shape = (len(labels), f.shape[-1])
                        sae_sum[l], sae_active_sum[l], sae_count[l] = (torch.zeros(shape, dtype=torch.float64)
                                                                       for _ in range(3))
                    sae_sum[l][a] += f.sum(0)
                    sae_active_sum[l][a] += (f * (f > 0)).sum(0)
                    sae_count[l][a] += (f > 0).sum(0)
            if monet:
                for g in range(cfg.num_routers):
                    first = cfg.layers_of_group(g)[0]
                    g1 = cache[f"blocks.{first}.moe.hook_g_row"].double()
                    g2 = cache[f"blocks.{first}.moe.hook_g_col"].double()
                    routing[a, g] += torch.einsum("bthi,bthj->hij", g1, g2).cpu()
        counts.append(n_tok)
        denom = max(n_tok, 1)
        mlp[a] /= denom
        resid[a] /= denom
        if monet:
            routing[a] /= denom
        for l in sae_sum:
            sae_sum[l][a] /= denom
    sae_active = {l: sae_active_sum[l] / sae_count[l].clamp_min(1) for l in sae_sum}
    return LabelStats(labels, counts, mlp.float(), resid.float(), routing, sae_sum, sae_active)


def _skew(target: Tensor, others: Tensor, eps: float) -> Tensor:
    """(target + eps) / (max over others + eps); others has the label axis first."""
    rival = others.max(0).values if others.shape[0] else torch.zeros_like(target)
    return (target + eps) / (rival + eps)


def select_monet_experts(stats: LabelStats, target: str, k: int = 4, groups: Sequence[int] | None = None,
                         heads: Sequence[int] | None = None, others: Sequence[str] | None = None,
                         min_score: float | None = None, rank: str = "usage", min_skew: float = 2.0,
                         eps: float = 1e-6) -> tuple[list[tuple[int, int, int]], list[float]]:
    """k experts per routing group specialised in ``target`` by label skew of the routing score.

    skew_e = r_e(c) / max_{D != c} r_e(D) (r summed over ``heads``, default all). Candidates:
    r_e(c) >= min_score (default: the mean of r_e(c) over the group's E^2 experts), so rarely
    routed experts with a noisy ratio are skipped. rank="usage" (default): among candidates that
    pass the MONET 2x rule (skew >= min_skew), the k most used on the concept (highest r_e(c));
    if fewer pass, the rest by skew. rank="skew": the k largest skews.
    Returns ([(group, i, j)], [skew of each]).
    """
    if stats.routing is None:
        raise ValueError("these statistics have no routing (not a MONET model)")
    if rank not in ("usage", "skew"):
        raise ValueError(f"rank must be 'usage' or 'skew', got {rank!r}")
    t = stats.index(target)
    other_idx = [stats.index(o) for o in (others or [l for l in stats.labels if l != target])]
    n_groups, n_heads, n_exp = stats.routing.shape[1], stats.routing.shape[2], stats.routing.shape[3]
    head_idx = list(range(n_heads)) if heads is None else list(heads)
    score = stats.routing[:, :, head_idx].sum(2).double()  # [labels, G, E, E]
    chosen, skews = [], []
    for g in (range(n_groups) if groups is None else groups):
        r_t = score[t, g].flatten()
        floor = float(r_t.mean()) if min_score is None else min_score
        sk = _skew(r_t, score[other_idx, g].flatten(1), eps)
        ok = r_t >= floor
        if rank == "usage":
            passed = ok & (sk >= min_skew)
            # passed experts first (by usage), then the other candidates by skew
            key = torch.where(passed, 1e6 + r_t / r_t.max().clamp_min(1e-30), torch.where(ok, sk / (sk.max() + 1), -1.0))
        else:
            key = torch.where(ok, sk, torch.full_like(sk, -1.0))
        for e in torch.argsort(key, descending=True, stable=True)[:k].tolist():
            if key[e] < 0:
                continue
            i, j = divmod(e, n_exp)
            chosen.append((int(g), i, j))
            skews.append(float(sk[e]))
    return chosen, skews


def select_monet_experts_by_attribution(model: Any, windows: Mapping[str, Tensor], target: str, k: int = 4,
                                        groups: Sequence[int] | None = None, others: Sequence[str] | None = None,
                                        max_windows: int = 4) -> tuple[list[tuple[int, int, int]], list[float]]:
    """Top-k experts per group by how much scaling them up lowers the loss on target text more
    than on other text: score = -dL_c/dS + mean_D dL_D/dS (expert_attribution, first order)."""
    from monet_interp.editing import expert_attribution

    group_list = list(range(model.cfg.num_routers)) if groups is None else list(groups)

    def attribution(label: str) -> Tensor:
        toks = windows[label][:max_windows].to(model.device)
        return expert_attribution(model, toks, groups=group_list).double().cpu()

    score = -attribution(target)
    rivals = [o for o in (others or [l for l in windows if l != target])]
    if rivals:
        score = score + torch.stack([attribution(o) for o in rivals]).mean(0)
    n_exp = model.cfg.moe_experts
    chosen, values = [], []
    for gi, g in enumerate(group_list):
        flat = score[gi].flatten()
        for e in torch.argsort(flat, descending=True, stable=True)[:k].tolist():
            i, j = divmod(e, n_exp)
            chosen.append((g, i, j))
            values.append(float(flat[e]))
    return chosen, values


def select_top1_targets(stats: LabelStats, target: str, n_heads: int = 1, groups: Sequence[int] | None = None,
                        others: Sequence[str] | None = None, rank: str = "usage", min_skew: float = 2.0,
                        eps: float = 1e-6) -> tuple[dict[int, dict[int, tuple[int, int]]], dict[int, dict[int, float]]]:
    """For each group, ``n_heads`` heads and the concept expert each should switch to.

    Per head h, r_h(c) is the head's mean weight on (i, j) over the concept's tokens; candidates
    have r_h(c) >= its mean over the E^2 experts. rank="usage" (default): the head's most used
    candidate passing the 2x rule (skew >= min_skew), heads ordered by that usage (heads with no
    passing expert come last, by skew); rank="skew": the largest skew, heads ordered by it.
    Returns ({group: {head: (i, j)}}, {group: {head: skew}}).
    """
    if stats.routing is None:
        raise ValueError("these statistics have no routing (not a MONET model)")
    if rank not in ("usage", "skew"):
        raise ValueError(f"rank must be 'usage' or 'skew', got {rank!r}")
    t = stats.index(target)
    other_idx = [stats.index(o) for o in (others or [l for l in stats.labels if l != target])]
    n_groups, heads, n_exp = stats.routing.shape[1], stats.routing.shape[2], stats.routing.shape[3]
    targets: dict[int, dict[int, tuple[int, int]]] = {}
    scores: dict[int, dict[int, float]] = {}
    for g in (range(n_groups) if groups is None else groups):
        best = []
        for h in range(heads):
            r_t = stats.routing[t, g, h].double().flatten()
            sk = _skew(r_t, stats.routing[other_idx, g, h].double().flatten(1), eps)
            ok = r_t >= r_t.mean()
            if rank == "usage":
                passed = ok & (sk >= min_skew)
                key = torch.where(passed, 1e6 + r_t / r_t.max().clamp_min(1e-30),
                                  torch.where(ok, sk / (sk.max() + 1), -1.0))
            else:
                key = torch.where(ok, sk, torch.full_like(sk, -1.0))
            e = int(key.argmax())
            best.append((float(key[e]), h, divmod(e, n_exp), float(sk[e])))
        best.sort(key=lambda b: (-b[0], b[1]))
        chosen = [b for b in best[:n_heads] if b[0] >= 0]
        targets[int(g)] = {h: ij for _, h, ij, _ in chosen}
        scores[int(g)] = {h: skew for _, h, _, skew in chosen}
    return targets, scores


def diffmean_vectors(stats: LabelStats, target: str, layers: Sequence[int], site: str = "mlp_out",
                     others: Sequence[str] | None = None) -> dict[str, Tensor]:
    """{hook name: mean(target) - mean over other labels of their means} at each layer."""
    table = {"mlp_out": stats.mlp_out, "resid_post": stats.resid_post}.get(site)
    if table is None:
        raise ValueError(f"DiffMean statistics exist for sites 'mlp_out' and 'resid_post', not {site!r}")
    t = stats.index(target)
    other_idx = [stats.index(o) for o in (others or [l for l in stats.labels if l != target])]
    return {_hook_name(l, site): table[t, l] - table[other_idx, l].mean(0) for l in layers}


def select_sae_features(stats: LabelStats, saes: Mapping[int, Any], target: str, k: int = 4,
                        others: Sequence[str] | None = None, rank: str = "usage", min_skew: float = 2.0,
                        scale_to: Mapping[str, float] | None = None, eps: float = 1e-6
                        ) -> tuple[dict[str, Tensor], list[dict[str, Any]]]:
    """k features per SAE layer by label skew of their mean activation, and the steering vector.

    skew_f = mean_f(c) / max_{D != c} mean_f(D); candidates have mean_f(c) >= the mean over
    features. rank="usage" (default): features passing the 2x rule, most active on the concept
    first (then the rest by skew); rank="skew": largest skew. The vector is sum_k a_k d_k with a_k
    the feature's mean activation where it fires on the concept; with ``scale_to`` {hook name:
    norm} it is rescaled to that L2 norm (e.g. the DiffMean vector's, so that alpha means the same
    push size for both methods and only the direction differs).
    """
    if rank not in ("usage", "skew"):
        raise ValueError(f"rank must be 'usage' or 'skew', got {rank!r}")
    t = stats.index(target)
    other_idx = [stats.index(o) for o in (others or [l for l in stats.labels if l != target])]
    vectors, chosen = {}, []
    for layer, sae in saes.items():
        mean = stats.sae_mean[layer].double()
        m_t = mean[t]
        sk = _skew(m_t, mean[other_idx], eps)
        ok = (m_t > 0) & (m_t >= m_t.mean())
        if rank == "usage":
            key = torch.where(ok & (sk >= min_skew), 1e6 + m_t / m_t.max().clamp_min(1e-30),
                              torch.where(ok, sk / (sk.max() + 1), -1.0))
        else:
            key = torch.where(ok, sk, torch.full_like(sk, -1.0))
        order = torch.argsort(key, descending=True, stable=True)[:k].tolist()
        dec = sae_decoder(sae).detach().float().cpu()
        vec = torch.zeros(dec.shape[1])
        for f in order:
            if key[f] < 0:
                continue
            a = float(stats.sae_active_mean[layer][t, f])
            vec += a * dec[f]
            chosen.append({"layer": layer, "feature": f, "skew": float(sk[f]), "mean_active": a})
        name = _hook_name(layer, "mlp_out")
        if scale_to is not None and name in scale_to and float(vec.norm()) > 0:
            vec = vec * (float(scale_to[name]) / float(vec.norm()))
        vectors[name] = vec
    return vectors, chosen


# ============================================================================ data
def _line_starts(text: str) -> list[int]:
    return [0] + [k + 1 for k, ch in enumerate(text) if ch == "\n" and k + 1 < len(text)]


def text_windows(texts: Sequence[str], n: int, n_tokens: int, encode: Callable[[str], list[int]], seed: int,
                 chars_per_token: int = 8, min_alnum: float = 0.3) -> list[list[int]]:
    """``n`` windows of exactly ``n_tokens`` tokens, each starting at a line start of a document
    (documents taken in turn, starts drawn with ``seed``); windows that are mostly blank or
    punctuation are skipped. Fewer than n when the documents are too short."""
    rng = random.Random(seed)
    docs = [t for t in texts if t.strip()]
    out: list[list[int]] = []
    if not docs:
        return out
    tries = 0
    while len(out) < n and tries < 20 * n + 20:
        doc = docs[tries % len(docs)]
        tries += 1
        span = n_tokens * chars_per_token
        starts = [s for s in _line_starts(doc) if s < max(1, len(doc) - span // 2)]
        start = rng.choice(starts) if starts else 0
        piece = doc[start:start + span]
        if sum(ch.isalnum() for ch in piece) < min_alnum * len(piece):
            continue
        ids = encode(piece)[:n_tokens]
        if len(ids) == n_tokens:
            out.append(ids)
    return out


def text_chunks(texts: Sequence[str], n: int, n_chars: int, seed: int) -> list[str]:
    """Up to ``n`` character chunks of about ``n_chars`` (cut at line starts), spread over documents."""
    rng = random.Random(seed)
    docs = [t for t in texts if t.strip()]
    out: list[str] = []
    tries = 0
    while docs and len(out) < n and tries < 10 * n + 10:
        doc = docs[tries % len(docs)]
        tries += 1
        starts = [s for s in _line_starts(doc) if s < max(1, len(doc) - n_chars // 2)]
        start = rng.choice(starts) if starts else 0
        piece = doc[start:start + n_chars]
        if piece.strip():
            out.append(piece)
    return out


# ============================================================================ configuration
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
        if self.monet_op not in ("add", "set"):
            raise ValueError(f"monet_op must be 'add' or 'set', got {self.monet_op!r}")
        if self.rank not in ("usage", "skew"):
            raise ValueError(f"rank must be 'usage' or 'skew', got {self.rank!r}")
        if self.sae_scale not in ("diffmean", "activation"):
            raise ValueError(f"sae_scale must be 'diffmean' or 'activation', got {self.sae_scale!r}")
        if self.top1_gate not in ("keep", "set"):
            raise ValueError(f"top1_gate must be 'keep' or 'set', got {self.top1_gate!r}")
        if self.steermoe_mode not in ("activate", "deactivate"):
            raise ValueError(f"steermoe_mode must be 'activate' or 'deactivate', got {self.steermoe_mode!r}")

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


# ============================================================================ generation and scoring
def _strip_after_eos(row: list[int], eos: int | None) -> list[int]:
    if eos is not None and eos in row:
        return row[: row.index(eos)]
    return row


@torch.no_grad()
def _generate(model: Any, prompts: Tensor, cfg: SteeringConfig, intervention: Intervention | None,
              alpha: float) -> list[list[int]]:
    ctx = intervention.context(model, alpha) if intervention is not None else contextlib.nullcontext()
    with ctx:
        out = model.generate(prompts.to(model.device), max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample,
                             temperature=cfg.temperature, top_k=cfg.top_k, seed=cfg.seed, stop_at_eos=True,
                             return_type="tokens")
    eos = model.cfg.eos_token_id
    return [_strip_after_eos(row, eos) for row in out[:, prompts.shape[1]:].tolist()]


def _pad(prompts: Tensor, gens: list[list[int]], pad: int) -> tuple[Tensor, Tensor]:
    """[prompt + generation] rows right-padded to one width, and the mask of generated tokens."""
    p = prompts.shape[1]
    width = p + max(1, max(len(g) for g in gens))
    full = torch.full((len(gens), width), pad, dtype=torch.long)
    mask = torch.zeros(len(gens), width, dtype=torch.bool)
    full[:, :p] = prompts
    for r, g in enumerate(gens):
        full[r, p:p + len(g)] = torch.tensor(g, dtype=torch.long)
        mask[r, p:p + len(g)] = True
    return full, mask


@torch.no_grad()
def _generation_nll(model: Any, prompts: Tensor, gens: list[list[int]], pad: int) -> np.ndarray:
    """Mean NLL per generated token under the model as it is now (nan for an empty generation)."""
    full, mask = _pad(prompts, gens, pad)
    logits = model(full.to(model.device)).float().cpu()
    nll = -torch.log_softmax(logits[:, :-1], -1).gather(-1, full[:, 1:, None]).squeeze(-1)
    m = mask[:, 1:]
    total = (nll * m).sum(1)
    count = m.sum(1)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan"))).double().numpy()


@torch.no_grad()
def _set_logprob_on(model: Any, full: Tensor, mask: Tensor, token_set: Sequence[int]) -> np.ndarray:
    """Mean over generated positions of log P(next token in the set) [n] (contexts = ``full``)."""
    if not token_set:
        return np.full(full.shape[0], np.nan)
    logits = model(full.to(model.device)).float().cpu()
    lp = set_logprob(logits[:, :-1], token_set)  # predicts position k+1 from k
    m = mask[:, 1:]
    count = m.sum(1)
    return torch.where(count > 0, (lp * m).sum(1) / count.clamp_min(1),
                       torch.full((full.shape[0],), float("nan"))).double().numpy()


@dataclass
class _ConceptData:
    concept: str
    prompts: Tensor  # [n, P] with BOS
    prompt_sources: list[str]
    kl_tokens: Tensor  # [k, T]
    token_set: list[int]


# ============================================================================ results
@dataclass
class SteeringResult:
    """Tables of a steering run.

    generations: one row per (model, method, concept, alpha, prompt). curves: means per (model,
    method, concept, alpha, half) with half in select/report/all. summary: per (model, method,
    concept) the alpha chosen on the select half and the report-half metrics at it, plus the
    steerability over all prompts. selections: the chosen units. notes: skipped methods etc.
    """

    generations: Any
    curves: Any
    summary: Any
    selections: dict[str, Any]
    classifier_accuracy: float
    config: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def table(self, metric: str = "harmonic", models: bool = True) -> Any:
        """A methods x concepts pivot of a summary column (rows (model, method) when models)."""
        index = ["model", "method"] if models else ["method"]
        return self.summary.pivot_table(index=index, columns="concept", values=metric, aggfunc="mean")

    def overview(self) -> Any:
        """Mean over concepts of the main summary columns per (model, method)."""
        cols = ["alpha", "concept_score", "concept_norm", "fluency", "harmonic", "kl", "dlogp", "distinct2",
                "slope", "wrong_way"]
        return self.summary.groupby(["model", "method"])[cols].mean().round(3)

    def winners(self, metric: str = "harmonic") -> Any:
        """Per (model, concept), the method with the highest metric (ties: listed together)."""
        import pandas as pd

        rows = []
        for (m, c), grp in self.summary.groupby(["model", "concept"]):
            best = grp[metric].max()
            rows.append({"model": m, "concept": c, metric: best,
                         "winner": "/".join(sorted(grp.loc[grp[metric] == best, "method"]))})
        return pd.DataFrame(rows)

    def markdown(self, digits: int = 2) -> str:
        """Markdown tables for a README: per (model, method) means over concepts and concepts won;
        harmonic mean per concept x (model, method); concept score / fluency / harmonic / KL of every
        cell (in a <details> block); and the success-vs-fluency curves (all prompts, mean over
        concepts) over the alpha grid."""
        s = self.summary
        col = lambda m, meth: f"{m} / {meth}"  # noqa: E731
        winners = self.winners()
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
        curves = self.curves[self.curves["half"] == "all"]
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

    @classmethod
    def load(cls, folder: str | Path) -> SteeringResult:
        """A result saved with :meth:`save` (tables from the CSVs, the rest from selections.json)."""
        import pandas as pd

        root = Path(folder)
        missing = [n for n in ("generations.csv", "curves.csv", "summary.csv", "selections.json")
                   if not (root / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{root} is not a saved steering run (missing {', '.join(missing)})")
        meta = json.loads((root / "selections.json").read_text())
        return cls(pd.read_csv(root / "generations.csv", keep_default_na=False, na_values=[""]),
                   pd.read_csv(root / "curves.csv"), pd.read_csv(root / "summary.csv"),
                   meta.get("selections", {}), float(meta.get("classifier_accuracy", float("nan"))),
                   meta.get("config", {}), list(meta.get("notes", [])), dict(meta.get("timings", {})))

    @classmethod
    def concat(cls, results: Sequence[SteeringResult]) -> SteeringResult:
        """One result from runs over different models (e.g. models run in parallel processes). The
        runs must share their configuration and concepts' classifier (same corpus, same labels)."""
        import pandas as pd

        results = list(results)
        if not results:
            raise ValueError("concat needs at least one steering result")
        first = results[0]
        for r in results[1:]:
            if r.config != first.config:
                raise ValueError("steering runs with different configurations cannot be combined")
            a, b = first.classifier_accuracy, r.classifier_accuracy
            if not ((math.isnan(a) and math.isnan(b)) or math.isclose(a, b, abs_tol=1e-9)):
                raise ValueError("steering runs with different classifiers (accuracy "
                                 f"{a:.4f} vs {b:.4f}) cannot be combined")
        models = [m for r in results for m in dict.fromkeys(r.summary["model"])]
        if len(models) != len(set(models)):
            raise ValueError(f"a model appears in more than one run: {models}")
        return cls(pd.concat([r.generations for r in results], ignore_index=True),
                   pd.concat([r.curves for r in results], ignore_index=True),
                   pd.concat([r.summary for r in results], ignore_index=True),
                   {k: v for r in results for k, v in r.selections.items()}, first.classifier_accuracy,
                   first.config, [n for r in results for n in r.notes],
                   {k: v for r in results for k, v in r.timings.items()})

    def figures(self) -> dict[str, Any]:
        """plotly figures: success-vs-coherence curves (concept score vs fluency and vs KL over the
        alpha grid, all prompts) and the harmonic mean vs alpha."""
        import plotly.express as px

        curves = self.curves[self.curves["half"] == "all"].copy()
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

    def examples(self, per_concept: int = 1) -> Any:
        """Report-half example generations: prompt, unsteered, each method at its chosen alpha."""
        import pandas as pd

        gens, rows = self.generations, []
        chosen = {(r.model, r.method, r.concept): r.alpha for r in self.summary.itertuples()}
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

    def html_section(self, include_plotlyjs: bool | str = False, max_examples: int = 12) -> str:
        """An HTML fragment (a <section>) for a report: setup, tables, curves, examples.

        include_plotlyjs: False when the page already loads plotly.js, "cdn" or True otherwise."""
        esc = html.escape
        cfg = self.config
        parts = ['<section id="steering">', "<h2>Steering: experts vs SAE features vs DiffMean</h2>"]
        parts.append(
            "<p>Prompts are held-out windows of <em>other</em> labels; each method pushes toward the target concept "
            f"over the alpha grid {esc(str(cfg.get('alphas')))} ({cfg.get('n_prompts')} prompts per concept, "
            f"{cfg.get('prompt_tokens')} prompt tokens, {cfg.get('max_new_tokens')} generated tokens, KV cache on). "
            "Concept score: share of generations an offline character n-gram naive Bayes classifier (trained on the "
            f"val split; test accuracy {self.classifier_accuracy:.3f}) assigns to the target (a generation with fewer "
            f"than {cfg.get('min_alnum_chars')} letters/digits counts as no concept). Fluency: "
            "exp(-max(0, logPPL<sub>0</sub>(gen<sub>a</sub>) - logPPL<sub>0</sub>(gen<sub>0</sub>))) under the "
            "unsteered model. Harmonic: strict harmonic mean of the normalised concept gain and fluency; alpha "
            "chosen on the even prompts, reported on the odd ones. KL: mean token KL(p<sub>0</sub> || "
            "p<sub>a</sub>) on unrelated held-out text. dlogp: change of log P(next token is one of the concept's "
            "characteristic tokens). Slope / wrong way: steerability of dlogp over the grid.</p>")
        parts.append("<h3>Harmonic mean (report half), methods x concepts</h3>")
        parts.append(self.table("harmonic").round(3).to_html(na_rep="-"))
        parts.append("<h3>Concept score, fluency and KL at the chosen alpha</h3>")
        for metric in ("concept_score", "fluency", "kl"):
            parts.append(f"<h4>{esc(metric)}</h4>")
            parts.append(self.table(metric).round(3).to_html(na_rep="-"))
        parts.append("<h3>Mean over concepts</h3>")
        parts.append(self.overview().to_html(na_rep="-"))
        parts.append("<h3>Best method per concept</h3>")
        parts.append(self.winners().round(3).to_html(index=False, na_rep="-"))
        figs = self.figures()
        first = True
        for fig in figs.values():
            parts.append(fig.to_html(full_html=False, include_plotlyjs=include_plotlyjs if first else False))
            first = False
        ex = self.examples()
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
        if self.notes:
            parts.append("<h3>Notes</h3><ul>" + "".join(f"<li>{esc(n)}</li>" for n in self.notes) + "</ul>")
        parts.append("</section>")
        return "\n".join(parts)

    def save(self, folder: str | Path, html_page: bool = True) -> Path:
        """generations.csv, curves.csv, summary.csv, tables, selections.json and (html_page)
        steering.html (the fragment with plotly.js inlined, viewable offline)."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        self.generations.to_csv(out / "generations.csv", index=False)
        self.curves.to_csv(out / "curves.csv", index=False)
        self.summary.to_csv(out / "summary.csv", index=False)
        self.table("harmonic").to_csv(out / "table_harmonic.csv")
        meta = {"config": self.config, "classifier_accuracy": self.classifier_accuracy, "notes": self.notes,
                "timings": self.timings, "selections": self.selections}
        (out / "selections.json").write_text(json.dumps(meta, indent=1, default=str))
        if html_page:
            (out / "steering.html").write_text(self.html_section(include_plotlyjs=True))
        return out


# ============================================================================ the run
def _resolve_models(models: Any) -> dict[str, Any]:
    if isinstance(models, Mapping):
        return {str(k): (_load(v) if isinstance(v, (str, Path)) else v) for k, v in models.items()}
    if isinstance(models, (str, Path)) or hasattr(models, "cfg"):
        models = [models]
    out: dict[str, Any] = {}
    for k, m in enumerate(models):
        model = _load(m) if isinstance(m, (str, Path)) else m
        name = str(m) if isinstance(m, (str, Path)) else model_name(model, f"model{k}")
        if name in out:
            name = f"{name}#{k}"
        out[name] = model
    return out


def _load(name: str | Path) -> Any:
    from monet_interp.training.dense import load_any_pretrained

    return load_any_pretrained(name)


def _resolve_corpus(corpus: Any) -> Any:
    if isinstance(corpus, (str, Path)):
        from monet_interp.data.corpus import Corpus

        return Corpus.load(corpus, verify=False)
    return corpus


def _labels_of(corpus: Any, concepts: Sequence[str] | None, cfg: SteeringConfig) -> tuple[list[str], dict[str, list[str]]]:
    available = list(corpus.labels)
    if concepts is None:
        concepts = [c for c in DEFAULT_CONCEPTS if c in available] or available[:4]
    concepts = list(concepts)
    missing = [c for c in concepts if c not in available]
    if missing:
        raise ValueError(f"concepts {missing} are not labels of the corpus ({', '.join(available)})")
    sources: dict[str, list[str]] = {}
    for c in concepts:
        if cfg.prompt_labels is not None:
            pool = [l for l in cfg.prompt_labels if l != c]
        else:
            pool = [l for l in concepts if l != c and corpus.label_kind(l) == corpus.label_kind(c)]
            pool = pool or [l for l in concepts if l != c]
        if not pool:
            raise ValueError(f"no prompt labels for concept {c!r}: give at least two concepts or prompt_labels")
        unknown = [l for l in pool if l not in available]
        if unknown:
            raise ValueError(f"prompt labels {unknown} are not labels of the corpus")
        sources[c] = pool
    return concepts, sources


def _classify(clf: NgramNaiveBayes, texts: Sequence[str], min_alnum: int) -> list[str]:
    """Classifier labels; texts with fewer than ``min_alnum`` letters/digits (degenerate output:
    blank lines, punctuation) get "none" and never count as a concept hit."""
    preds = clf.predict(texts)
    return [p if sum(ch.isalnum() for ch in t) >= min_alnum else "none" for p, t in zip(preds, texts)]


def train_classifier(corpus: Any, labels: Sequence[str], cfg: SteeringConfig) -> tuple[NgramNaiveBayes, float]:
    """Fit the concept classifier on val-split chunks; accuracy on test-split chunks of roughly a
    generation's length (4 characters per generated token)."""
    texts, ys, ev_texts, ev_ys = [], [], [], []
    for k, label in enumerate(labels):
        chunks = text_chunks(corpus.texts(label, "val"), cfg.classifier_chunks, cfg.classifier_chars, cfg.seed + k)
        texts += chunks
        ys += [label] * len(chunks)
        ev = text_chunks(corpus.texts(label, "test"), cfg.classifier_eval_chunks, 4 * cfg.max_new_tokens,
                         cfg.seed + 1000 + k)
        ev_texts += ev
        ev_ys += [label] * len(ev)
    clf = NgramNaiveBayes().fit(texts, ys)
    return clf, clf.accuracy(ev_texts, ev_ys)


def run_steering(models: Any, corpus: Any, concepts: Sequence[str] | None = None,
                 methods: Sequence[str] = METHODS, config: SteeringConfig | None = None,
                 saes: Mapping[str, Mapping[int, Any]] | None = None, sae_trainer: Callable | None = None,
                 verbose: bool = True, **overrides: Any) -> SteeringResult:
    """Steer every model toward every concept with every method over the alpha grid, and score it.

    models: a model, a name/path ("monet-vd-tiny", a folder), or a list / {name: model} of them
    (HookedMONET or HookedDense; a dense model gets only "sae" and "diffmean"). corpus: a Corpus or
    its folder. concepts: corpus labels (default: DEFAULT_CONCEPTS present in the corpus).
    methods: any of "monet", "top1", "sae", "diffmean", "steermoe". saes: {model name: {layer: sae}} to use
    instead of training (an SAE needs ``W_dec`` [F, d] and ``encode`` or W_enc/b_enc/b_dec);
    sae_trainer(model, corpus, layers=[...], labels=..., **cfg.sae_train_kwargs) -> {layer: sae}
    (default: ``baselines.train_saes``, TopK SAEs by SAELens, on the evaluation labels' train
    text). Other keyword arguments override SteeringConfig fields.
    """
    import pandas as pd

    cfg = config or SteeringConfig()
    if overrides:
        known = {f.name for f in fields(SteeringConfig)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise TypeError(f"unknown steering option(s) {bad}; see SteeringConfig")
        cfg = SteeringConfig(**{**asdict(cfg), **overrides})
    methods = list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {METHODS}")
    models_by_name = _resolve_models(models)
    corpus = _resolve_corpus(corpus)
    concepts, sources = _labels_of(corpus, concepts, cfg)
    eval_labels = sorted(set(concepts) | {s for pool in sources.values() for s in pool},
                         key=list(corpus.labels).index)
    timings: dict[str, float] = {}
    notes: list[str] = []
    log = print if verbose else (lambda *a, **k: None)

    t0 = time.perf_counter()
    clf, clf_acc = train_classifier(corpus, eval_labels, cfg)
    timings["classifier"] = time.perf_counter() - t0
    log(f"[steer] classifier over {len(eval_labels)} labels: test accuracy {clf_acc:.3f} "
        f"({timings['classifier']:.1f}s)")
    texts_cache: dict[tuple[str, str], list[str]] = {}

    def texts(label: str, split: str) -> list[str]:
        key = (label, split)
        if key not in texts_cache:
            limit = None if split != "train" else 4 * cfg.stat_windows
            texts_cache[key] = corpus.texts(label, split, limit)
        return texts_cache[key]

    gen_rows: list[dict[str, Any]] = []
    selections: dict[str, Any] = {}
    for model_label, model in models_by_name.items():
        t_model = time.perf_counter()
        tok = model._require_tokenizer()
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        monet, top1 = is_monet(model), is_top1(model)
        n_layers = model.cfg.num_hidden_layers
        # ---- statistics on train windows
        windows: dict[str, Tensor] = {}
        for k, label in enumerate(eval_labels):
            ws = text_windows(texts(label, "train"), cfg.stat_windows, cfg.stat_tokens, tok.encode, cfg.seed + 17 * k)
            if not ws:
                raise ValueError(f"label {label!r} has no train window of {cfg.stat_tokens} tokens")
            windows[label] = torch.tensor(ws, dtype=torch.long)
        model_saes: dict[int, Any] = {}
        if "sae" in methods:
            layers = list(cfg.sae_layers) if cfg.sae_layers is not None else [n_layers // 2]
            given = (saes or {}).get(model_label)
            if given is not None:
                model_saes = {int(l): s for l, s in given.items() if int(l) in layers} or dict(given)
            else:
                trainer = (sae_trainer or find_sae_trainer()) if cfg.train_saes else None
                if trainer is None:
                    notes.append(f"{model_label}: no SAE given and none trained (train_saes={cfg.train_saes}); "
                                 "method 'sae' skipped")
                else:
                    t_sae = time.perf_counter()
                    kwargs = {"labels": eval_labels, **cfg.sae_train_kwargs}
                    model_saes = {int(l): s for l, s in trainer(model, corpus, layers=layers, **kwargs).items()}
                    timings[f"{model_label}/sae_training"] = time.perf_counter() - t_sae
                    log(f"[steer] {model_label}: trained SAEs at layers {layers} "
                        f"({timings[f'{model_label}/sae_training']:.1f}s)")
        stats = collect_label_stats(model, windows, model_saes, cfg.batch_size)
        token_ids = {label: windows[label].flatten().tolist() for label in eval_labels}
        specials = [t for t in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) if t is not None]
        # ---- per concept
        for ci, concept in enumerate(concepts):
            others = [l for l in eval_labels if l != concept]
            pool = sources[concept]
            per_source = {s: text_windows(texts(s, "test"), cfg.n_prompts, cfg.prompt_tokens, tok.encode,
                                          cfg.seed + 101 * (eval_labels.index(s) + 1)) for s in pool}
            prompts, prompt_src = [], []
            cursor = {s: 0 for s in pool}
            k = 0
            while len(prompts) < cfg.n_prompts and any(cursor[s] < len(per_source[s]) for s in pool):
                s = pool[k % len(pool)]
                k += 1
                if cursor[s] < len(per_source[s]):
                    prompts.append(bos + per_source[s][cursor[s]])
                    prompt_src.append(s)
                    cursor[s] += 1
            if len(prompts) < 2:
                notes.append(f"{model_label}/{concept}: fewer than 2 prompts; skipped")
                continue
            prompt_t = torch.tensor(prompts, dtype=torch.long)
            kl_pool = [l for l in eval_labels if l != concept]
            kl_w: list[list[int]] = []
            for j, l in enumerate(kl_pool):
                kl_w += text_windows(texts(l, "test"), 1, cfg.kl_tokens, tok.encode, cfg.seed + 7919 + 31 * j + ci)
                if len(kl_w) >= cfg.kl_windows:
                    break
            kl_t = torch.tensor(kl_w, dtype=torch.long)
            token_set = (characteristic_tokens(token_ids, concept, k=cfg.char_tokens, exclude=specials)
                         or characteristic_tokens(token_ids, concept, k=cfg.char_tokens, min_count=1, exclude=specials))
            if not token_set:
                notes.append(f"{model_label}/{concept}: no characteristic tokens; dlogp is nan")
            # ---- interventions
            interventions: dict[str, Intervention] = {}
            sel: dict[str, Any] = {"characteristic_tokens": [tok.id_to_token(t) for t in token_set],
                                   "prompt_sources": prompt_src}
            for method in methods:
                if method == "monet":
                    if not monet:
                        continue
                    heads = list(cfg.monet_heads) if cfg.monet_heads is not None else None
                    groups = list(cfg.monet_groups) if cfg.monet_groups is not None else None
                    if cfg.monet_layers is not None:
                        groups = sorted({model.cfg.group_of_layer(l) for l in cfg.monet_layers})
                    if cfg.monet_selection == "skew":
                        experts, scores = select_monet_experts(stats, concept, cfg.monet_k, groups, heads, others,
                                                               rank=cfg.rank)
                    else:
                        experts, scores = select_monet_experts_by_attribution(model, windows, concept, cfg.monet_k,
                                                                              groups, others)
                    interventions[method] = ExpertBoost(experts, cfg.monet_op, heads, cfg.monet_layers, scores)
                elif method == "top1":
                    if not monet or not (top1 or cfg.top1_any_routing):
                        continue
                    targets, scores = select_top1_targets(stats, concept, cfg.top1_heads,
                                                          cfg.top1_groups, others, rank=cfg.rank)
                    interventions[method] = Top1Replace(targets, cfg.top1_gate, scores=scores)
                elif method == "steermoe":
                    if not monet:
                        continue
                    n_heads = cfg.steermoe_heads if cfg.steermoe_heads is not None else model.cfg.moe_heads
                    targets, scores = select_top1_targets(stats, concept, n_heads, cfg.steermoe_groups, others,
                                                          rank=cfg.rank)
                    interventions[method] = RouterLogitSteer(targets, cfg.steermoe_mode, scores=scores)
                elif method == "diffmean":
                    layers = list(cfg.diffmean_layers) if cfg.diffmean_layers is not None else list(range(n_layers))
                    vecs = diffmean_vectors(stats, concept, layers, cfg.diffmean_site, others)
                    interventions[method] = AddVector(vecs, {"site": cfg.diffmean_site, "layers": layers}, "diffmean")
                elif method == "sae":
                    if not model_saes:
                        continue
                    norms = None
                    if cfg.sae_scale == "diffmean":
                        norms = {n: float(v.norm()) for n, v in
                                 diffmean_vectors(stats, concept, list(model_saes), "mlp_out", others).items()}
                    vecs, feats = select_sae_features(stats, model_saes, concept, cfg.sae_k, others, rank=cfg.rank,
                                                      scale_to=norms)
                    interventions[method] = AddVector(vecs, {"features": feats}, "sae")
            for method, iv in interventions.items():
                sel[method] = iv.describe()
            selections.setdefault(model_label, {})[concept] = sel
            # ---- unsteered reference
            base_gens = _generate(model, prompt_t, cfg, None, 0.0)
            base_full, base_mask = _pad(prompt_t, base_gens, pad)
            base_nll = _generation_nll(model, prompt_t, base_gens, pad)
            base_setlp = _set_logprob_on(model, base_full, base_mask, token_set)
            with torch.no_grad():
                base_kl_logits = model(kl_t.to(model.device)).float().cpu() if len(kl_t) else None
            base_texts = [tok.decode(g) for g in base_gens]
            base_pred = _classify(clf, base_texts, cfg.min_alnum_chars)
            n_prompts = len(prompts)
            halves = ["select" if p % 2 == 0 else "report" for p in range(n_prompts)]
            prompt_texts = [tok.decode(p[len(bos):]) for p in prompts]
            for method, iv in interventions.items():
                t_method = time.perf_counter()
                for alpha in cfg.alphas:
                    if alpha == 0:
                        gens, nll, setlp, texts_a, pred = base_gens, base_nll, base_setlp, base_texts, base_pred
                        kl = 0.0
                    else:
                        gens = _generate(model, prompt_t, cfg, iv, alpha)
                        nll = _generation_nll(model, prompt_t, gens, pad)  # unsteered model scores it
                        with iv.context(model, alpha):
                            setlp = _set_logprob_on(model, base_full, base_mask, token_set)
                            with torch.no_grad():
                                kl_logits = model(kl_t.to(model.device)).float().cpu() if len(kl_t) else None
                        kl = mean_token_kl(base_kl_logits, kl_logits) if kl_logits is not None else float("nan")
                        texts_a = [tok.decode(g) for g in gens]
                        pred = _classify(clf, texts_a, cfg.min_alnum_chars)
                    proba = clf.predict_proba(texts_a, per_gram_temperature=1.0)
                    p_target = proba[:, clf.classes_.index(concept)]
                    flu = fluency_score(nll, base_nll)
                    for p in range(n_prompts):
                        gen_rows.append({
                            "model": model_label, "method": method, "concept": concept, "alpha": float(alpha),
                            "prompt_idx": p, "half": halves[p], "source": prompt_src[p], "prompt": prompt_texts[p],
                            "generation": texts_a[p], "n_generated": len(gens[p]), "predicted": pred[p],
                            "hit": float(pred[p] == concept), "base_hit": float(base_pred[p] == concept),
                            "p_target": float(p_target[p]), "nll0": float(nll[p]), "fluency": float(flu[p]),
                            "distinct2": distinct_n(gens[p], 2), "dlogp": float(setlp[p] - base_setlp[p]),
                            "kl": kl})
                timings[f"{model_label}/{concept}/{method}"] = time.perf_counter() - t_method
        timings[model_label] = time.perf_counter() - t_model
        log(f"[steer] {model_label}: {len(concepts)} concepts in {timings[model_label]:.1f}s")
    gens_df = pd.DataFrame(gen_rows)
    if gens_df.empty:
        raise ValueError("nothing was evaluated (no applicable method / prompts); see the notes: " + "; ".join(notes))
    curves_df, summary_df = summarise(gens_df, cfg.alphas)
    return SteeringResult(gens_df, curves_df, summary_df, selections, clf_acc, cfg.to_dict(), notes, timings)


def summarise(gens: Any, alphas: Sequence[float]) -> tuple[Any, Any]:
    """(curves, summary) from the per-generation table (see SteeringResult)."""
    import pandas as pd

    keys = ["model", "method", "concept", "alpha"]
    frames = []
    for half in ("select", "report", "all"):
        sub = gens if half == "all" else gens[gens["half"] == half]
        agg = sub.groupby(keys, sort=False).agg(
            concept_score=("hit", "mean"), base_score=("base_hit", "mean"), p_target=("p_target", "mean"),
            fluency=("fluency", "mean"), distinct2=("distinct2", "mean"), dlogp=("dlogp", "mean"),
            kl=("kl", "mean"), n=("hit", "size")).reset_index()
        agg["half"] = half
        frames.append(agg)
    curves = pd.concat(frames, ignore_index=True)
    curves["concept_norm"] = normalise_concept(curves["concept_score"], curves["base_score"])
    curves["harmonic"] = harmonic_mean(curves["concept_norm"].to_numpy(), curves["fluency"].to_numpy())
    rows = []
    for (model, method, concept), grp in curves.groupby(["model", "method", "concept"], sort=False):
        sel = grp[grp["half"] == "select"].copy()
        # best harmonic; ties -> higher concept gain, then lower KL, then smaller alpha
        sel = sel.assign(_h=sel["harmonic"].fillna(-1), _c=sel["concept_norm"].fillna(-1), _kl=sel["kl"].fillna(np.inf))
        best = sel.sort_values(["_h", "_c", "_kl", "alpha"], ascending=[False, False, True, True]).iloc[0]
        alpha = float(best["alpha"])
        rep = grp[(grp["half"] == "report") & (grp["alpha"] == alpha)]
        rep = rep.iloc[0] if len(rep) else best
        sub = gens[(gens["model"] == model) & (gens["method"] == method) & (gens["concept"] == concept)]
        prop = sub.pivot_table(index="prompt_idx", columns="alpha", values="dlogp", aggfunc="mean")
        prop = prop.reindex(columns=sorted(prop.columns))
        st = steerability(list(prop.columns), prop.to_numpy()) if prop.shape[1] >= 2 else {"slope": np.nan,
                                                                                          "wrong_way": np.nan}
        rows.append({"model": model, "method": method, "concept": concept, "alpha": alpha,
                     "select_harmonic": float(best["harmonic"]), "concept_score": float(rep["concept_score"]),
                     "base_score": float(rep["base_score"]), "concept_norm": float(rep["concept_norm"]),
                     "fluency": float(rep["fluency"]), "harmonic": float(rep["harmonic"]), "kl": float(rep["kl"]),
                     "dlogp": float(rep["dlogp"]), "p_target": float(rep["p_target"]),
                     "distinct2": float(rep["distinct2"]), "slope": st["slope"], "wrong_way": st["wrong_way"],
                     "n_report": int(rep["n"])})
    return curves, pd.DataFrame(rows)


__all__ = [
    "AddVector", "DEFAULT_CONCEPTS", "ExpertBoost", "Intervention", "RouterLogitSteer", "force_router_logits",
    "LabelStats", "METHODS", "SteeringConfig",
    "SteeringResult", "Top1Replace", "collect_label_stats", "diffmean_vectors", "find_sae_trainer", "is_monet",
    "is_top1", "replace_top1", "run_steering", "sae_decoder", "sae_encode", "select_monet_experts",
    "select_monet_experts_by_attribution", "select_sae_features", "select_top1_targets", "summarise",
    "text_chunks", "text_windows", "train_classifier",
]
