"""Activation statistics of any unit set over a labelled corpus: MONET experts, dense-MLP
neurons, SAE features, or anything else readable from hook points.

    from monet_interp.stats.units import compute_unit_stats, dense_neurons
    neurons = compute_unit_stats(dense_model, corpus, dense_neurons(dense_model, layer=1))
    experts = routing_stats.units(group=0)          # the same UnitStats view of MONET experts

A *unit set* (:class:`UnitSet`) says which hook points to read and how to turn them into
activations [batch, pos, n_units]; :func:`compute_unit_stats` streams the corpus exactly as
:func:`monet_interp.stats.compute_routing_stats` does (same windows, same document ids, same
distributed behaviour) and collects per unit: per-label activation sums and firing counts,
per-document maxima, top-k contexts, per-token-class sums, and a token sample. The analyses in
``monet_interp.analyses.monosemanticity`` take :class:`UnitStats`, whatever the unit set.

Plugging in a new unit set: subclass :class:`UnitSet` (or use :class:`HookUnits` with a
``transform``, e.g. an SAE encoder applied to a residual-stream hook).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monet_interp.stats.routing_stats import (
    D,
    CorpusLike,
    StatsError,
    TokenClassifier,
    TopKBuffer,
    check_metadata,
    contexts_frame,
    load_arrays,
    make_batch,
    model_description,
    prepare_stream,
    sample_mask,
    save_arrays,
)

_LAYER = re.compile(r"^blocks\.(\d+)\.")


# ============================================================================================
# unit sets
# ============================================================================================


class UnitSet:
    """Units whose per-token activations come from one forward pass.

    Subclasses set ``name`` (human readable), ``kind`` ("expert", "neuron", "feature", ...),
    ``n_units`` and ``hook_names``, and implement :meth:`activations`. ``stop_at_layer`` (the
    forward stops before this block; None = run everything) defaults to one past the deepest
    ``blocks.{l}.`` hook.
    """

    name: str = "units"
    kind: str = "unit"
    n_units: int = 0
    hook_names: tuple[str, ...] = ()

    @property
    def stop_at_layer(self) -> int | None:
        layers = [int(m.group(1)) for m in map(_LAYER.match, self.hook_names) if m]
        if len(layers) != len(self.hook_names):
            return None
        return max(layers) + 1

    def activations(self, captured: dict[str, torch.Tensor]) -> torch.Tensor:
        """[batch, pos, n_units] activations from the captured hook tensors (by hook name)."""
        raise NotImplementedError

    def unit_names(self) -> list[str] | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"class": type(self).__name__, "name": self.name, "kind": self.kind, "n_units": self.n_units,
                "hooks": list(self.hook_names)}


class HookUnits(UnitSet):
    """Units = the last axes of one hook's activation, optionally after ``transform`` (e.g. an SAE
    encoder mapping [batch, pos, d] to features [batch, pos, n]). Trailing axes are flattened."""

    def __init__(self, hook_name: str, n_units: int, *, transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 name: str | None = None, kind: str = "unit", unit_names: Sequence[str] | None = None):
        self.hook_names = (hook_name,)
        self.n_units = int(n_units)
        self.transform = transform
        self.name = name or hook_name
        self.kind = kind
        self._names = list(unit_names) if unit_names is not None else None

    def activations(self, captured: dict[str, torch.Tensor]) -> torch.Tensor:
        x = captured[self.hook_names[0]]
        if self.transform is not None:
            x = self.transform(x)
        x = x.reshape(*x.shape[:2], -1)
        if x.shape[-1] != self.n_units:
            raise StatsError(f"{self.name}: expected {self.n_units} units, the hook gives {x.shape[-1]}")
        return x

    def unit_names(self) -> list[str] | None:
        return self._names


def dense_neurons(model_or_d_mlp: Any, layer: int) -> HookUnits:
    """The MLP neurons of layer ``layer`` of a dense baseline (hook ``blocks.{l}.mlp.hook_post``,
    [batch, pos, d_mlp], after relu2). Pass the model (HookedDense) or d_mlp."""
    d_mlp = model_or_d_mlp if isinstance(model_or_d_mlp, int) else model_or_d_mlp.cfg.d_mlp
    return HookUnits(f"blocks.{layer}.mlp.hook_post", d_mlp, name=f"dense L{layer} neurons", kind="neuron")


def sae_features(hook_name: str, encode: Callable[[torch.Tensor], torch.Tensor], n_features: int,
                 name: str | None = None) -> HookUnits:
    """SAE features: ``encode`` maps the hook's activation [batch, pos, d] to [batch, pos, n]."""
    return HookUnits(hook_name, n_features, transform=encode, name=name or f"SAE features @ {hook_name}",
                     kind="feature")


class MonetExpertUnits(UnitSet):
    """Experts (i, j) of one routing group, activation = routing score sum_h g1[h,i] g2[h,j].

    ``experts``: flat ids (i*E + j) or (i, j) pairs; None = all E^2 (only sensible for small E:
    activations are [tokens, E^2]; for all experts of a large model use compute_routing_stats)."""

    kind = "expert"

    def __init__(self, cfg: Any, group: int, experts: Sequence[int] | Sequence[tuple[int, int]] | None = None):
        self.E = cfg.moe_experts
        self.group = group
        if experts is None:
            flat = np.arange(self.E * self.E)
        else:
            flat = np.array([e[0] * self.E + e[1] if isinstance(e, (tuple, list)) else int(e) for e in experts],
                            dtype=np.int64)
        if flat.size and (flat.min() < 0 or flat.max() >= self.E * self.E):
            raise StatsError(f"expert ids must be in [0, {self.E * self.E})")
        self.flat = flat
        self.n_units = len(flat)
        layer = cfg.layers_of_group(group)[0]
        self.hook_names = (f"blocks.{layer}.moe.hook_g_row", f"blocks.{layer}.moe.hook_g_col")
        self.name = f"MONET group {group} experts"
        self._idx: torch.Tensor | None = None

    def activations(self, captured: dict[str, torch.Tensor]) -> torch.Tensor:
        g1, g2 = captured[self.hook_names[0]].float(), captured[self.hook_names[1]].float()
        if self._idx is None or self._idx.device != g1.device:
            self._idx = torch.as_tensor(self.flat, device=g1.device)
        i, j = torch.div(self._idx, self.E, rounding_mode="floor"), self._idx % self.E
        if self.n_units == self.E * self.E:
            return torch.einsum("bphi,bphj->bpij", g1, g2).flatten(-2)
        return (g1[..., i] * g2[..., j]).sum(-2)

    def unit_names(self) -> list[str]:
        return [f"g{self.group}:({e // self.E},{e % self.E})" for e in self.flat]

    def describe(self) -> dict[str, Any]:
        return dict(super().describe(), group=self.group, n_experts=self.E, experts=self.flat.tolist())


# ============================================================================================
# UnitStats
# ============================================================================================


@dataclass
class UnitStats:
    """Activation statistics of N units over L labels and D documents (numpy arrays).

    Fields:
        name, kind: the unit set ("dense L1 neurons", "neuron"; "MONET group 0 experts", "expert").
        labels, label_kinds; tokens int64 [L] (counted tokens per label).
        act_sum float64 [L, N]; fire_count int64 [L, N] (activation > fire_threshold).
        doc_label int32 [D], doc_index int64 [D], doc_length int64 [D]  (as in RoutingStats).
        doc_max float32 [D, N] or None: max activation over each document's counted tokens.
        topk_score float32 [N, k], topk_key int64 [N, k]: top contexts (key = doc << 24 | pos).
        unit_names: list[str] or None. For experts, unit u is flat expert id i*E + j and
            metadata has "n_experts" and "group".
        class_names, class_tokens [C], class_act_sum float64 [C, N], class_fire_count [C, N].
        sample_key [S], sample_class [S], sample_label [S], sample_act float32 [S, N]: a
            deterministic token sample with full activation vectors (token-level detection).
    """

    name: str
    kind: str
    labels: list[str]
    label_kinds: list[str]
    tokens: np.ndarray
    act_sum: np.ndarray
    fire_count: np.ndarray
    fire_threshold: float
    doc_label: np.ndarray
    doc_index: np.ndarray
    doc_length: np.ndarray
    doc_max: np.ndarray | None = None
    topk_score: np.ndarray | None = None
    topk_key: np.ndarray | None = None
    unit_names: list[str] | None = None
    class_names: list[str] | None = None
    class_tokens: np.ndarray | None = None
    class_act_sum: np.ndarray | None = None
    class_fire_count: np.ndarray | None = None
    sample_key: np.ndarray | None = None
    sample_class: np.ndarray | None = None
    sample_label: np.ndarray | None = None
    sample_act: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def n_units(self) -> int:
        return int(self.act_sum.shape[1])

    @property
    def n_docs(self) -> int:
        return len(self.doc_label)

    def label_index(self, label: str | int) -> int:
        if isinstance(label, (int, np.integer)):
            return int(label)
        try:
            return self.labels.index(label)
        except ValueError:
            raise KeyError(f"label {label!r} not in statistics; labels: {self.labels}") from None

    def mean_activation(self) -> np.ndarray:
        """[L, N] mean activation per label (per token)."""
        return self.act_sum / np.maximum(self.tokens, 1)[:, None]

    def profile(self) -> np.ndarray:
        """[L, N] mean activation normalised over labels (NaN for units never active)."""
        r = self.mean_activation()
        total = r.sum(0, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, r / np.where(total > 0, total, 1), np.nan)

    def frequency(self) -> np.ndarray:
        """[L, N] share of each label's tokens with activation > fire_threshold."""
        return self.fire_count / np.maximum(self.tokens, 1)[:, None]

    def class_mean(self) -> np.ndarray | None:
        """[C, N] mean activation per token class (None without a classifier)."""
        if self.class_act_sum is None:
            return None
        return self.class_act_sum / np.maximum(self.class_tokens, 1)[:, None]

    def unit_label(self, unit: int) -> str:
        if self.unit_names is not None:
            return self.unit_names[unit]
        if self.kind == "expert" and "n_experts" in self.metadata:
            i, j = divmod(int(unit), int(self.metadata["n_experts"]))
            return f"g{self.metadata.get('group', 0)}:({i},{j})"
        return str(unit)

    def top_contexts(self, unit: int):
        """DataFrame of the unit's top contexts: rank, score, label, doc, pos, doc_global."""
        if self.topk_score is None:
            raise StatsError("no top-k contexts were collected (top_k=0)")
        return contexts_frame(self.topk_score[unit], self.topk_key[unit], self.labels, self.doc_label,
                              self.doc_index)

    _ARRAYS = ("tokens", "act_sum", "fire_count", "doc_label", "doc_index", "doc_length", "doc_max", "topk_score",
               "topk_key", "class_tokens", "class_act_sum", "class_fire_count", "sample_key", "sample_class",
               "sample_label", "sample_act")
    _SCALARS = ("name", "kind", "labels", "label_kinds", "fire_threshold", "unit_names", "class_names")

    def save(self, folder: str | Path) -> Path:
        meta = dict(self.metadata)
        meta.update({k: getattr(self, k) for k in self._SCALARS})
        return save_arrays(folder, "unit_stats", {k: getattr(self, k) for k in self._ARRAYS}, meta)

    @classmethod
    def load(cls, folder: str | Path, *, model: Any = None, corpus: Any = None) -> UnitStats:
        arrays, meta = load_arrays(folder, "unit_stats")
        check_metadata(meta, model, corpus, str(folder))
        scalars = {k: meta.get(k) for k in cls._SCALARS}
        metadata = {k: v for k, v in meta.items() if k not in cls._SCALARS}
        return cls(**scalars, **{k: arrays.get(k) for k in cls._ARRAYS}, metadata=metadata)


def unit_stats_from_routing(rs: Any, group: int) -> UnitStats:
    """UnitStats view of one routing group's E^2 experts (unit = flat id i*E + j). Activation =
    routing score; doc_max / token classes / sample are present when the RoutingStats has them."""
    if not 0 <= group < rs.n_groups:
        raise StatsError(f"group {group} out of range [0, {rs.n_groups})")
    L, EE = len(rs.labels), rs.n_experts ** 2
    C = len(rs.class_names) if rs.class_names is not None else 0
    has_sample = rs.sample_key is not None
    return UnitStats(
        name=f"MONET group {group} experts", kind="expert", labels=list(rs.labels), label_kinds=list(rs.label_kinds),
        tokens=rs.tokens, act_sum=rs.score_sum[:, group].reshape(L, EE),
        fire_count=rs.fire_count[:, group].reshape(L, EE), fire_threshold=rs.fire_threshold,
        doc_label=rs.doc_label, doc_index=rs.doc_index, doc_length=rs.doc_length,
        doc_max=rs.doc_max[group] if rs.doc_max is not None else None,
        topk_score=rs.topk_score[group], topk_key=rs.topk_key[group], unit_names=None,
        class_names=rs.class_names, class_tokens=rs.class_tokens,
        class_act_sum=rs.class_score_sum[:, group].reshape(C, EE) if C else None,
        class_fire_count=rs.class_fire_count[:, group].reshape(C, EE) if C else None,
        sample_key=rs.sample_key, sample_class=rs.sample_class, sample_label=rs.sample_label,
        sample_act=rs.sample_scores(group) if has_sample else None,
        metadata=dict(rs.metadata, group=group, n_experts=rs.n_experts, layers=rs.group_layers[group]),
    )


# ============================================================================================
# the streaming pass
# ============================================================================================


@torch.inference_mode()
def compute_unit_stats(
    model: Any,
    corpus: CorpusLike,
    units: UnitSet,
    *,
    split: str = "val",
    labels: Sequence[str] | None = None,
    max_tokens_per_label: int | None = None,
    seq_len: int = 128,
    batch_size: int = 8,
    top_k: int = 16,
    fire_threshold: float = 0.0,
    include_special: bool = False,
    doc_max: bool = True,
    token_classes: TokenClassifier | None = None,
    token_sample: int = 0,
    progress: bool = True,
) -> UnitStats:
    """Stream ``corpus`` through ``model`` (any HookedRootModule with ``cfg``, e.g. HookedMONET or
    HookedDense) and collect :class:`UnitStats` of ``units``. Arguments as in
    :func:`monet_interp.stats.compute_routing_stats`; ``fire_threshold`` defaults to 0 (a relu2
    neuron fires when its activation is positive), ``doc_max`` to True ([D, N] float32)."""
    setup = prepare_stream(model, corpus, split=split, labels=labels, max_tokens_per_label=max_tokens_per_label,
                           seq_len=seq_len, batch_size=batch_size, top_k=top_k, fire_threshold=fire_threshold,
                           include_special=include_special, doc_max=doc_max, token_classes=token_classes,
                           token_sample=token_sample)
    plan, rate, world, device = setup.plan, setup.rate, setup.world, setup.device
    L, N = len(plan.labels), units.n_units
    C = len(token_classes.class_names) if token_classes is not None else 0
    f64, i64 = dict(dtype=torch.float64, device=device), dict(dtype=torch.long, device=device)
    tokens = torch.zeros(L, **i64)
    act_sum = torch.zeros(L, N, **f64)
    fire = torch.zeros(L, N, **i64)
    dmax = torch.full((plan.n_docs, N), -torch.inf, dtype=torch.float32, device=device) if doc_max else None
    topk = TopKBuffer(N, top_k, device)
    if C:
        class_tokens, class_sum, class_fire = torch.zeros(C, **i64), torch.zeros(C, N, **f64), torch.zeros(C, N, **i64)
    samples: list[tuple[torch.Tensor, ...]] = []
    captured: dict[str, torch.Tensor] = {}

    def grab(tensor: torch.Tensor, hook: Any) -> None:
        captured[hook.name] = tensor

    start = time.perf_counter()
    with setup.progress_bar(progress, units.name) as bar, \
            model.hooks(fwd_hooks=[(name, grab) for name in units.hook_names]):
        for windows in plan.batches(setup.mine, batch_size):
            batch = make_batch(plan, windows, device, skip_ids=setup.skip, classes=setup.classes)
            captured.clear()
            model(batch.tokens, return_type=None, stop_at_layer=units.stop_at_layer)
            missing = [n for n in units.hook_names if n not in captured]
            if missing:
                raise StatsError(f"hooks {missing} did not run: not hook points of {type(model).__name__}?")
            acts = units.activations(captured).reshape(-1, N)[batch.valid].float()
            lab = batch.label
            tokens[lab] += acts.shape[0]
            act_sum[lab] += acts.sum(0, dtype=torch.float64)
            fired = acts > fire_threshold
            fire[lab] += fired.sum(0)
            if dmax is not None:
                dmax.scatter_reduce_(0, batch.doc[:, None].expand(-1, N), acts, "amax")
            key = batch.key
            topk.update_dense(acts, key)
            cls = batch.classes
            if C and cls is not None:
                ok = cls >= 0
                class_tokens += torch.bincount(cls[ok], minlength=C)
                class_sum.index_add_(0, cls[ok], acts[ok].double())
                class_fire.index_add_(0, cls[ok], fired[ok].long())
            if rate > 0:
                m = sample_mask(key, rate)
                if cls is not None:
                    m &= cls >= 0
                if bool(m.any()):
                    c = cls[m] if cls is not None else torch.full_like(key[m], -1)
                    samples.append((key[m], c, torch.full_like(c, lab), acts[m]))
            bar.update(batch.n_tokens)
    for t in (tokens, act_sum, fire) + ((class_tokens, class_sum, class_fire) if C else ()):
        D.all_reduce_(t, "sum")
    if dmax is not None:
        D.all_reduce_(dmax, "max")
    topk.reduce()
    sample = None
    if rate > 0:
        local = tuple(torch.cat([s[i] for s in samples]).cpu().numpy() if samples else None for i in range(4))
        if local[0] is None:
            local = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, N), np.float32))
        parts = D.all_gather_object(local) if world > 1 else [local]
        key, cls_, lab_, act_ = (np.concatenate([p[i] for p in parts]) for i in range(4))
        order = np.argsort(key, kind="stable")
        sample = (key[order], cls_[order].astype(np.int16), lab_[order].astype(np.int32),
                  act_[order].astype(np.float32))
    np_ = lambda t: t.cpu().numpy()  # noqa: E731
    return UnitStats(
        name=units.name, kind=units.kind, labels=list(plan.labels), label_kinds=list(plan.label_kinds),
        tokens=np_(tokens), act_sum=np_(act_sum), fire_count=np_(fire), fire_threshold=float(fire_threshold),
        doc_label=plan.doc_label, doc_index=plan.doc_index,
        doc_length=np.array([len(d) for d in plan.docs], dtype=np.int64),
        doc_max=np_(dmax) if dmax is not None else None,
        topk_score=np_(topk.score) if top_k else None, topk_key=np_(topk.key) if top_k else None,
        unit_names=units.unit_names(),
        class_names=list(token_classes.class_names) if token_classes is not None else None,
        class_tokens=np_(class_tokens) if C else None, class_act_sum=np_(class_sum) if C else None,
        class_fire_count=np_(class_fire) if C else None,
        **(dict(zip(("sample_key", "sample_class", "sample_label", "sample_act"), sample)) if sample else {}),
        metadata={
            "units": units.describe(),
            "model": model_description(model),
            "corpus": setup.corpus_meta,
            "settings": setup.settings,
            "timing": {"seconds": time.perf_counter() - start, "device": str(device)},
            **({"n_experts": units.E, "group": units.group} if isinstance(units, MonetExpertUnits) else {}),
        },
    )
