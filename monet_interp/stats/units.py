"""Activation statistics of any unit set over a labelled corpus: MONET experts, dense-MLP
neurons, SAE features, or anything else readable from hook points.

    from monet_interp.stats import compute_unit_stats
    from monet_interp.units import dense_neurons
    neurons = compute_unit_stats(dense_model, corpus, dense_neurons(dense_model, layer=1))
    experts = routing_stats.units(group=0)          # the same UnitStats view of MONET experts

A *unit set* (:class:`monet_interp.units.Unit`) says which hook points to read and how to turn them into
activations [batch, pos, n_units]; :func:`compute_unit_stats` is the streaming pass of
:func:`monet_interp.stats.compute_routing_stats` (:func:`monet_interp.stats.corpus_pass.stream_corpus`:
same windows, same document ids, same distributed behaviour) with its own accumulator, which
collects per unit: per-label activation sums and firing counts, per-document maxima, top-k
contexts, per-token-class sums, and a token sample. The analyses in
``monet_interp.analyses.monosemanticity`` take :class:`UnitStats`, whatever the unit set.

Plugging in a new unit set: subclass :class:`monet_interp.units.Unit` (or use
:class:`monet_interp.units.HookUnits` with a ``transform``, e.g. an SAE encoder applied to a
residual-stream hook).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from monet_interp.stats.corpus_pass import StreamAccumulator, StreamSetup, prepare_stream, stream_corpus
from monet_interp.stats.fingerprint import model_description
from monet_interp.stats.stream import Batch, CorpusLike, StatsError, TokenClassifier
from monet_interp.stats.topk import TopKBuffer
from monet_interp.stats.unit_stats import UnitStats


class _UnitAccumulator(StreamAccumulator):
    """The unit pass's statistic: per-label activation sums and firing counts, document maxima,
    top-k contexts, token-class sums and the token sample of one unit set."""

    SUMS = ("tokens", "act_sum", "fire", "class_tokens", "class_sum", "class_fire")
    MAXES = ("dmax",)

    def __init__(self, setup: StreamSetup, units: Any, top_k: int, fire_threshold: float, doc_max: bool,
                 n_classes: int):
        self.units, self.thr, self.C, self.rate, self.world = units, fire_threshold, n_classes, setup.rate, setup.world
        L, N, device = len(setup.plan.labels), units.n_units, setup.device
        f64, i64 = dict(dtype=torch.float64, device=device), dict(dtype=torch.long, device=device)
        self.tokens = torch.zeros(L, **i64)
        self.act_sum = torch.zeros(L, N, **f64)
        self.fire = torch.zeros(L, N, **i64)
        self.dmax = (torch.full((setup.plan.n_docs, N), -torch.inf, dtype=torch.float32, device=device)
                     if doc_max else None)
        self.topk = TopKBuffer(N, top_k, device)
        if n_classes:
            self.class_tokens = torch.zeros(n_classes, **i64)
            self.class_sum = torch.zeros(n_classes, N, **f64)
            self.class_fire = torch.zeros(n_classes, N, **i64)
        self.samples: list[tuple[torch.Tensor, ...]] = []  # (key, class, label, activations) per batch
        self.sample: tuple[np.ndarray, ...] | None = None  # after gather(): the UnitStats sample_* fields
        self.captured: dict[str, torch.Tensor] = {}

    def _grab(self, tensor: torch.Tensor, hook: Any) -> None:
        self.captured[hook.name] = tensor

    def hooks(self, model: Any) -> contextlib.AbstractContextManager:
        return model.hooks(fwd_hooks=[(name, self._grab) for name in self.units.hook_names])

    def forward(self, model: Any, batch: Batch) -> torch.Tensor:
        self.captured.clear()
        model(batch.tokens, return_type=None, stop_at_layer=self.units.stop_at_layer)
        missing = [n for n in self.units.hook_names if n not in self.captured]
        if missing:
            raise StatsError(f"hooks {missing} did not run: not hook points of {type(model).__name__}?")
        return self.units.activations(self.captured)

    def add_batch(self, batch: Batch, activations: torch.Tensor) -> None:
        N, C = self.units.n_units, self.C
        acts = activations.reshape(-1, N)[batch.valid].float()
        lab = batch.label
        self.tokens[lab] += acts.shape[0]
        self.act_sum[lab] += acts.sum(0, dtype=torch.float64)
        fired = acts > self.thr
        self.fire[lab] += fired.sum(0)
        if self.dmax is not None:
            self.dmax.scatter_reduce_(0, batch.doc[:, None].expand(-1, N), acts, "amax")
        key = batch.key
        self.topk.update_dense(acts, key)
        ok = self.count_classes(batch, C)
        if ok is not None:
            cls = batch.classes[ok]
            self.class_sum.index_add_(0, cls, acts[ok].double())
            self.class_fire.index_add_(0, cls, fired[ok].long())
        self.sample_rows(batch, self.rate, acts)

    def topk_buffers(self) -> list[TopKBuffer]:
        return [self.topk]

    def gather(self) -> None:
        """The token sample of all ranks, sorted by key."""
        if self.rate <= 0:
            return
        key, cls, lab, act = self.gather_samples(np.zeros((0, self.units.n_units), np.float32))
        self.sample = (key, cls, lab, act.astype(np.float32))


@torch.inference_mode()
def compute_unit_stats(
    model: Any,
    corpus: CorpusLike,
    units: Any,
    *,
    split: str = "val",
    labels: Sequence[str] | None = None,
    max_tokens_per_label: int | None = None,
    seq_len: int = 128,
    batch_size: int = 8,
    top_k: int = 16,
    fire_threshold: float | None = None,
    include_special: bool = False,
    doc_max: bool = True,
    token_classes: TokenClassifier | None = None,
    token_sample: int = 0,
    progress: bool = True,
) -> UnitStats:
    """Stream ``corpus`` through ``model`` (any HookedRootModule with ``cfg``, e.g. HookedMONET or
    HookedDense) and collect :class:`UnitStats` of ``units``. Arguments as in
    :func:`monet_interp.stats.compute_routing_stats`; ``fire_threshold`` defaults to the unit
    set's (``units.fire_threshold``, 0 unless set: a relu2 neuron fires when its activation is
    positive), ``doc_max`` to True ([D, N] float32)."""
    if fire_threshold is None:
        fire_threshold = units.fire_threshold
    setup = prepare_stream(model, corpus, split=split, labels=labels, max_tokens_per_label=max_tokens_per_label,
                           seq_len=seq_len, batch_size=batch_size, top_k=top_k, fire_threshold=fire_threshold,
                           include_special=include_special, doc_max=doc_max, token_classes=token_classes,
                           token_sample=token_sample)
    plan = setup.plan
    C = len(token_classes.class_names) if token_classes is not None else 0
    acc = _UnitAccumulator(setup, units, top_k, fire_threshold, doc_max, C)
    timing = stream_corpus(model, setup, acc, batch_size=batch_size, progress=progress, desc=units.name)
    sample = acc.sample
    np_ = lambda t: t.cpu().numpy()  # noqa: E731
    return UnitStats(
        name=units.name, kind=units.kind, labels=list(plan.labels), label_kinds=list(plan.label_kinds),
        tokens=np_(acc.tokens), act_sum=np_(acc.act_sum), fire_count=np_(acc.fire),
        fire_threshold=float(fire_threshold),
        doc_label=plan.doc_label, doc_index=plan.doc_index,
        doc_length=plan.doc_lengths(),
        doc_max=np_(acc.dmax) if acc.dmax is not None else None,
        topk_score=np_(acc.topk.score) if top_k else None, topk_key=np_(acc.topk.key) if top_k else None,
        unit_names=units.unit_names(),
        class_names=list(token_classes.class_names) if token_classes is not None else None,
        class_tokens=np_(acc.class_tokens) if C else None, class_act_sum=np_(acc.class_sum) if C else None,
        class_fire_count=np_(acc.class_fire) if C else None,
        **(dict(zip(("sample_key", "sample_class", "sample_label", "sample_act"), sample)) if sample else {}),
        metadata={
            "units": {"class": type(units).__name__, **units.info(), "hooks": list(units.hook_names)},
            "model": model_description(model),
            "corpus": setup.corpus_meta,
            "settings": setup.settings,
            "timing": {"seconds": timing.seconds, "device": str(setup.device)},
            **units.stats_metadata(),
        },
    )


__all__ = ["compute_unit_stats"]
