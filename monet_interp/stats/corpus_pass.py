"""The one streaming statistics pass: every corpus-wide statistic (routing statistics, unit
statistics) is an accumulator driven through the same walk.

    setup = prepare_stream(model, corpus, split="val", ...)      # checks, window plan, shard
    acc = MyAccumulator(setup, ...)                              # a StreamAccumulator
    timing = stream_corpus(model, setup, acc, batch_size=8, progress=True, desc="my stats")

:func:`stream_corpus` walks this rank's windows in single-label batches (:mod:`monet_interp.stats.stream`),
runs the model through the accumulator (``forward``), hands it each batch's outputs
(``add_batch``), shows the progress bar (rank 0), and ends with the reduction across processes
(``reduce``: sums, maxima, top-k buffers, the token sample). Under torch.distributed each rank
reads every world-th window and every rank ends with the full statistics.

The loop itself is :func:`run_pass`: any batch source (an iterable of objects with ``n_tokens``)
driven through an accumulator. :func:`stream_corpus` feeds it the stream's batches; the expert
report (``monet_interp.analyses.report.collect_expert_stats``) feeds it the report's windows,
batched and padded as the report runs them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from monet_interp.progress import progress_bar
from monet_interp.stats.collectives import all_gather_object, all_reduce_, rank_world
from monet_interp.stats.fingerprint import corpus_fingerprint
from monet_interp.stats.stream import (
    Batch,
    CorpusLike,
    StatsError,
    TokenClassifier,
    WindowPlan,
    _ClassCache,
    make_batch,
    plan_windows,
    sample_mask,
    special_token_ids,
)
from monet_interp.stats.topk import TopKBuffer


def _progress_bar(total: int, enabled: bool, desc: str):
    return progress_bar(total=total, unit="tok", unit_scale=True, desc=desc, disable=not enabled, dynamic_ncols=True,
                        smoothing=0.1)


@dataclass
class StreamSetup:
    """What every streaming pass prepares before its loop: the window plan, the token-class cache,
    the token-sample rate, this rank's windows, the token ids not counted, and the settings/corpus
    metadata the results record."""

    plan: WindowPlan
    classes: _ClassCache | None
    rate: float
    mine: np.ndarray
    skip: list[int]
    rank: int
    world: int
    device: torch.device
    settings: dict[str, Any]
    corpus_meta: dict[str, Any]

    def progress_bar(self, enabled: bool, desc: str):
        return _progress_bar(int(self.plan.win_len[self.mine].sum()), enabled and self.rank == 0, desc)


def prepare_stream(model: Any, corpus: CorpusLike, *, split: str, labels: Sequence[str] | None,
                   max_tokens_per_label: int | None, seq_len: int, batch_size: int, top_k: int,
                   fire_threshold: float, include_special: bool, doc_max: bool,
                   token_classes: TokenClassifier | None, token_sample: int) -> StreamSetup:
    """Check the arguments shared by the streaming passes and plan the windows (see
    :func:`monet_interp.stats.compute_routing_stats` for their meaning)."""
    max_pos = getattr(model.cfg, "max_position_embeddings", None)
    if max_pos is not None and seq_len > max_pos:
        raise StatsError(f"seq_len={seq_len} exceeds the model's max_position_embeddings={max_pos}")
    if batch_size < 1 or top_k < 0:
        raise StatsError("batch_size must be >= 1 and top_k >= 0")
    rank, world = rank_world()
    plan = plan_windows(corpus, labels, split, seq_len, max_tokens_per_label)
    classes = _ClassCache(token_classes, plan) if token_classes is not None else None
    rate = 0.0
    if token_sample > 0:
        per_label = plan.doc_tokens_per_label()
        pool = (per_label[[classes.applies[i] for i in range(len(plan.labels))]].sum()
                if classes is not None else per_label.sum())
        rate = min(1.0, token_sample / max(int(pool), 1))
    settings = {"split": split, "labels": list(plan.labels), "max_tokens_per_label": max_tokens_per_label,
                "seq_len": seq_len, "batch_size": batch_size, "top_k": top_k, "fire_threshold": fire_threshold,
                "include_special": include_special, "doc_max": doc_max,
                "token_classes": type(token_classes).__name__ if token_classes is not None else None,
                "token_sample": token_sample, "token_sample_rate": rate, "world_size": world}
    corpus_meta = {"path": str(getattr(corpus, "path", "")) or None, "fingerprint": corpus_fingerprint(corpus, plan)}
    skip = [] if include_special else special_token_ids(model)
    return StreamSetup(plan, classes, rate, plan.shard(rank, world), skip, rank, world, next(model.parameters()).device,
                       settings, corpus_meta)


# ============================================================================================
# accumulators and the driver
# ============================================================================================


class StreamAccumulator:
    """One statistic of the streaming pass. Subclasses run the model on a batch (``forward``) and
    add its outputs (``add_batch``); the reduction across processes is declared: the tensors named
    in ``SUMS`` are summed and those in ``MAXES`` maxed (attributes that are absent or None are
    skipped), the buffers of ``topk_buffers()`` merged, and ``gather()`` collects what is not a
    fixed-size tensor (the token sample)."""

    SUMS: tuple[str, ...] = ()
    MAXES: tuple[str, ...] = ()

    def hooks(self, model: Any) -> contextlib.AbstractContextManager:
        """Context held over the whole pass (e.g. hooks that capture activations)."""
        return contextlib.nullcontext()

    def forward(self, model: Any, batch: Batch) -> Any:
        raise NotImplementedError

    def add_batch(self, batch: Batch, outputs: Any) -> None:
        raise NotImplementedError

    def topk_buffers(self) -> list[TopKBuffer]:
        return []

    def gather(self) -> None:
        """Collect per-process lists across processes (after the tensor reductions)."""

    # helpers for the token-class counts and the token sample (attributes class_tokens, samples, world)
    def count_classes(self, batch: Batch, n_classes: int) -> torch.Tensor | None:
        """Add the batch's tokens per class to ``class_tokens``; the mask of its classified tokens
        (None without token classes)."""
        cls = batch.classes
        if not n_classes or cls is None:
            return None
        ok = cls >= 0
        self.class_tokens += torch.bincount(cls[ok], minlength=n_classes)
        return ok

    def sample_rows(self, batch: Batch, rate: float, *extra: torch.Tensor) -> torch.Tensor | None:
        """Append the batch's token-sample rows (key, class, label, *extra) to ``samples`` (with
        token classes only classified tokens are sampled); their mask, None when none is sampled."""
        if rate <= 0:
            return None
        key, cls = batch.key, batch.classes
        sampled = sample_mask(key, rate)
        if cls is not None:
            sampled &= cls >= 0
        if not bool(sampled.any()):
            return None
        c = cls[sampled] if cls is not None else torch.full_like(key[sampled], -1)
        self.samples.append((key[sampled], c, torch.full_like(c, batch.label), *(x[sampled] for x in extra)))
        return sampled

    def gather_samples(self, *extra_empty: np.ndarray) -> tuple[np.ndarray, ...]:
        """The token-sample rows of all processes sorted by key: key, class (int16), label (int32)
        and the extra fields (``extra_empty``: each one's empty array, for a process without rows)."""
        i64 = np.zeros(0, np.int64)
        key, cls, lab, *extra = gather_rows(self.samples, (i64, i64, i64, *extra_empty), self.world)
        order = np.argsort(key, kind="stable")
        return (key[order], cls[order].astype(np.int16), lab[order].astype(np.int32), *(x[order] for x in extra))

    def reduce(self) -> None:
        for op, names in (("sum", self.SUMS), ("max", self.MAXES)):
            for name in names:
                tensor = getattr(self, name, None)
                if tensor is not None:
                    all_reduce_(tensor, op)
        for buf in self.topk_buffers():
            buf.reduce()
        self.gather()


@dataclass
class PassTiming:
    """Wall time of a pass (walk + reduction) and the tokens this rank ran (specials included)."""

    seconds: float
    tokens_run: int


@torch.inference_mode()
def run_pass(model: Any, batches: Iterable[Any], acc: StreamAccumulator, bar: Any, *,
             step: Callable[[Any], int] | None = None) -> PassTiming:
    """The walk of every pass: hold ``acc.hooks(model)``, run each batch through ``acc.forward``
    and hand its outputs to ``acc.add_batch``, advance ``bar`` (a progress bar, used as a context
    manager) by ``step(batch)`` (default: ``batch.n_tokens``), then ``acc.reduce()``. ``batches``
    is iterated lazily, inside the timing."""
    start = time.perf_counter()
    tokens_run = 0
    with bar, acc.hooks(model):
        for batch in batches:
            acc.add_batch(batch, acc.forward(model, batch))
            tokens_run += batch.n_tokens
            bar.update(batch.n_tokens if step is None else step(batch))
    acc.reduce()
    return PassTiming(time.perf_counter() - start, tokens_run)


def stream_corpus(model: Any, setup: StreamSetup, acc: StreamAccumulator, *, batch_size: int, progress: bool,
                  desc: str) -> PassTiming:
    """Drive ``acc`` over this rank's windows of ``setup`` and reduce it across processes."""
    batches = (make_batch(setup.plan, windows, setup.device, skip_ids=setup.skip, classes=setup.classes)
               for windows in setup.plan.batches(setup.mine, batch_size))
    return run_pass(model, batches, acc, setup.progress_bar(progress, desc))


def gather_rows(parts: list[tuple[torch.Tensor, ...]], empty: Sequence[np.ndarray], world: int
                ) -> tuple[np.ndarray, ...]:
    """Concatenate per-batch row tuples (field i of every part) into numpy arrays, then across
    processes (rank order). ``empty``: field i when this process has no rows (its dtype/width)."""
    local = tuple(torch.cat([p[i] for p in parts]).cpu().numpy() if parts else e for i, e in enumerate(empty))
    gathered = all_gather_object(local) if world > 1 else [local]
    return tuple(np.concatenate([g[i] for g in gathered]) for i in range(len(local)))


__all__ = ["PassTiming", "StreamAccumulator", "StreamSetup", "gather_rows", "prepare_stream", "run_pass",
           "stream_corpus"]
