"""Routing statistics of a MONET model over a labelled corpus, in one streaming pass.

    from monet_interp.stats import compute_routing_stats, RoutingStats
    stats = compute_routing_stats(model, corpus, split="val", top_k=16)
    stats.mean_score()                 # [label, group, E, E]  r_e(D)
    stats.top_contexts(0, i, j)        # DataFrame: rank, score, label, doc, pos
    stats.save("runs/stats"); RoutingStats.load("runs/stats", model=model, corpus=corpus)

Definitions (``/work/shared/reference/evals.md``). Expert e = (i, j) of routing group g has score
s_e(t) = sum_h g1[t,h,i] g2[t,h,j] in [0, H] on token t; its mean score on label D is
r_e(D) = mean over the tokens t of D of s_e(t). The [tokens, E, E] expansion is never formed:

- sums over a token set are one matmul per head, sum_t g1[t,h,i] g2[t,h,j] = (G1_h^T G2_h)[i,j]
  (this gives the per-label sums and the per-head totals [G, H, E, E]);
- everything that needs s_e(t) token by token (firing counts, the score histogram, the top-k
  contexts, document maxima, token-class sums) uses the *sparse* list of (token, expert, score)
  with s > 0: per (token, head) only k1 * k2 pairs (i, j) have g1 g2 > 0. They are enumerated
  ragged (no padding to the batch's largest kept count), and a pair kept by several heads is
  summed over heads before any threshold is applied (it is emitted once, by the first such head).

The accumulators' memory is independent of corpus length (the window plan keeps three integers
per window and two per document), except two opt-in outputs: per-document maxima
(``doc_max=True``, [G, docs, E^2]) and the token sample (``token_sample``, bounded by its size).


Top-k contexts are kept in a [G, E*E, k] buffer per group, merged batch by batch with the sparse
entries. A context is identified by ``key = doc << 24 | pos`` (doc = global document id of the
run, pos = position in the document); ties in score are broken by the smaller key, so the result
does not depend on the order in which batches arrive or on the number of processes. (Batch
composition can still move the routing factors themselves by float rounding, ~1e-7.)

Score histogram: bin b holds the (token, expert) pairs with hist_edges[b] <= s < hist_edges[b+1]
(65 edges: 0, then 64 log-spaced from 1e-4 to H; the last bin includes H); pairs with s = 0 are
not binned.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from monet_interp.stats.corpus_pass import StreamAccumulator, StreamSetup, gather_rows, prepare_stream, stream_corpus
from monet_interp.stats.fingerprint import model_description
from monet_interp.stats.routing_stats import HIST_BINS, HIST_LOW, RoutingStats
from monet_interp.stats.stream import Batch, CorpusLike, StatsError, TokenClassifier
from monet_interp.stats.topk import TopKBuffer


def sparse_expert_scores(g1: torch.Tensor, g2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All (token, expert, score) with s_e(t) = sum_h g1[t,h,i] g2[t,h,j] > 0, without expansion.

    g1, g2: [T, H, E]. Returns ``tok`` [N] (index into T), ``expert`` [N] (flat id i*E + j) and
    ``score`` [N] (float32). Each (token, expert) appears once (heads combined). Cost O(N * H)
    where N = sum over (t, h) of (#nonzero g1[t,h]) * (#nonzero g2[t,h]).
    """
    T, H, E = g1.shape
    dev = g1.device
    nz1, nz2 = g1 > 0, g2 > 0
    c2 = nz2.sum(-1).reshape(-1)  # kept j per (t, h)
    r1, i1 = nz1.reshape(T * H, E).nonzero(as_tuple=True)  # kept (row = t*H + h, i), grouped by row
    r2, i2 = nz2.reshape(T * H, E).nonzero(as_tuple=True)
    st2 = torch.cumsum(c2, 0) - c2  # first kept j of each row in (r2, i2)
    rep = c2.index_select(0, r1)  # each kept i pairs with every kept j of its row
    n = int(rep.sum())
    if n == 0:
        empty = torch.zeros(0, dtype=torch.long, device=dev)
        return empty, empty, torch.zeros(0, dtype=torch.float32, device=dev)
    a_sel = torch.repeat_interleave(torch.arange(len(r1), device=dev), rep, output_size=n)
    b_local = torch.arange(n, device=dev) - torch.repeat_interleave(torch.cumsum(rep, 0) - rep, rep, output_size=n)
    row = r1.index_select(0, a_sel)
    b_sel = st2.index_select(0, row) + b_local
    i, j = i1.index_select(0, a_sel), i2.index_select(0, b_sel)
    e = i * E + j
    if H == 1:
        v1 = g1.reshape(-1).index_select(0, r1 * E + i1).float()
        v2 = g2.reshape(-1).index_select(0, r2 * E + i2).float()
        score = v1.index_select(0, a_sel) * v2.index_select(0, b_sel)
        ok = score > 0  # (a product can underflow to 0)
        return row[ok], e[ok], score[ok]
    t = torch.div(row, H, rounding_mode="floor")
    h = row - t * H
    a = g1.float().transpose(1, 2).reshape(T * E, H).index_select(0, t * E + i)  # [N, H]: g1[t, :, i]
    b = g2.float().transpose(1, 2).reshape(T * E, H).index_select(0, t * E + j)  # [N, H]: g2[t, :, j]
    p = a * b
    first = (p > 0).to(torch.uint8).argmax(-1) == h  # emit each (t, e) once: from its first head
    return t[first], e[first], p.sum(-1)[first]


# ============================================================================================
# the routing statistic (one accumulator of the streaming pass)
# ============================================================================================


class _RoutingAccumulator(StreamAccumulator):
    """The routing pass's statistic: per-label sums, firing counts, histogram, top-k contexts, and
    the opt-in document maxima, token-class sums and token sample (see the module docstring)."""

    SUMS = ("tokens", "score_sum", "fire", "head_sum", "hist", "class_tokens", "class_sum", "class_fire")
    MAXES = ("doc_max",)

    def __init__(self, setup: StreamSetup, G: int, H: int, E: int, stop_at_layer: int, top_k: int,
                 fire_threshold: float, doc_max: bool, n_classes: int):
        n_labels, n_docs, device = len(setup.plan.labels), setup.plan.n_docs, setup.device
        self.G, self.H, self.E, self.thr, self.stop = G, H, E, float(fire_threshold), stop_at_layer
        self.world = setup.world
        f64 = dict(dtype=torch.float64, device=device)
        i64 = dict(dtype=torch.long, device=device)
        self.tokens = torch.zeros(n_labels, **i64)
        self.score_sum = torch.zeros(n_labels, G, E, E, **f64)
        self.fire = torch.zeros(n_labels, G, E * E, **i64)
        self.head_sum = torch.zeros(G, H, E, E, **f64)
        self.edges = torch.tensor(np.concatenate([[0.0], np.geomspace(HIST_LOW, H, HIST_BINS)]), **f64)
        self.inner = self.edges[1:-1].float()
        self.hist = torch.zeros(n_labels, G, HIST_BINS, **i64)
        self.topk = [TopKBuffer(E * E, top_k, device) for _ in range(G)]
        self.doc_max = torch.zeros(G, n_docs, E * E, dtype=torch.float32, device=device) if doc_max else None
        self.n_classes = n_classes
        if n_classes:
            self.class_tokens = torch.zeros(n_classes, **i64)
            self.class_sum = torch.zeros(n_classes, G, E * E, **f64)
            self.class_fire = torch.zeros(n_classes, G, E * E, **i64)
        self.sample_rate = setup.rate
        self.samples: list[tuple[torch.Tensor, ...]] = []  # (key, class, label) per batch
        self.sample_entries: list[tuple[torch.Tensor, ...]] = []  # (key, group, expert, score)
        self.sample: tuple[np.ndarray, ...] | None = None  # after gather(): the RoutingStats sample_* fields

    def forward(self, model: Any, batch: Batch) -> Sequence[Any]:
        _, routers = model(batch.tokens, return_type=None, stop_at_layer=self.stop, return_routing=True)
        return routers

    def add_batch(self, batch: Batch, routers: Sequence[Any]) -> None:
        lab = batch.label
        n = batch.valid.numel()
        self.tokens[lab] += n
        if n == 0:
            return
        key = batch.key
        cls = batch.classes
        self.count_classes(batch, self.n_classes)
        sampled = self.sample_rows(batch, self.sample_rate)
        EE = self.E * self.E
        for g, rf in enumerate(routers):
            g1 = rf.g_row.reshape(-1, self.H, self.E)[batch.valid].float()
            g2 = rf.g_col.reshape(-1, self.H, self.E)[batch.valid].float()
            hs = torch.bmm(g1.permute(1, 2, 0), g2.permute(1, 0, 2))  # [H, E, E] = G1_h^T G2_h
            self.head_sum[g] += hs
            self.score_sum[lab, g] += hs.sum(0)
            t, e, s = sparse_expert_scores(g1, g2)
            fired = s > self.thr
            self.fire[lab, g] += torch.bincount(e[fired], minlength=EE)
            self.hist[lab, g] += torch.bincount(torch.bucketize(s, self.inner, right=True), minlength=HIST_BINS)
            self.topk[g].update(e, s, key[t])
            if self.doc_max is not None:
                self.doc_max[g].view(-1).scatter_reduce_(0, batch.doc[t] * EE + e, s, "amax")
            if self.n_classes and cls is not None:
                c = cls[t]
                ok = c >= 0
                flat = c[ok] * (self.G * EE) + g * EE + e[ok]
                self.class_sum.view(-1).index_add_(0, flat, s[ok].double())
                self.class_fire.view(-1).index_add_(0, flat[fired[ok]], torch.ones_like(flat[fired[ok]]))
            if sampled is not None:
                m = sampled[t]
                if bool(m.any()):
                    self.sample_entries.append((key[t[m]], torch.full_like(e[m], g), e[m], s[m]))

    def topk_buffers(self) -> list[TopKBuffer]:
        return self.topk

    def gather(self) -> None:
        """The token sample of all ranks, sorted by key; entries refer to sample rows."""
        if self.sample_rate <= 0:
            return
        key, cls, lab = self.gather_samples()
        i64 = np.zeros(0, np.int64)
        ekey, grp, exp, score = gather_rows(self.sample_entries, (i64,) * 3 + (np.zeros(0, np.float32),), self.world)
        row = np.searchsorted(key, ekey)
        eorder = np.lexsort((exp, grp, row))
        self.sample = (key, cls, lab, row[eorder].astype(np.int64),
                       grp[eorder].astype(np.int16), exp[eorder].astype(np.int64), score[eorder].astype(np.float32))


@torch.inference_mode()
def compute_routing_stats(
    model: Any,
    corpus: CorpusLike,
    *,
    split: str = "val",
    labels: Sequence[str] | None = None,
    max_tokens_per_label: int | None = None,
    seq_len: int = 128,
    batch_size: int = 8,
    top_k: int = 16,
    fire_threshold: float = 0.01,
    include_special: bool = False,
    doc_max: bool = False,
    token_classes: TokenClassifier | None = None,
    token_sample: int = 0,
    progress: bool = True,
) -> RoutingStats:
    """One streaming pass of ``model`` (a HookedMONET) over ``corpus``; see the module docstring.

    Args:
        split: corpus split to read ("val" by default: statistics on held-out text).
        labels: labels to include (default: all of the corpus's), in this order.
        max_tokens_per_label: document tokens taken per label (documents in order, the last one
            truncated); None = all.
        seq_len: window length (<= the model's max_position_embeddings). batch_size: windows per
            forward pass. Neither changes the result beyond float rounding of the sums.
        top_k: contexts kept per expert (0 = none).
        fire_threshold: an expert "fires" on a token when s_e(t) > fire_threshold. Scores lie in
            [0, H]; 0.01 counts nearly every token where any head routes to the pair with a
            non-negligible weight. Pick it from ``RoutingStats.histogram()`` if in doubt.
        include_special: also count bos/eos tokens (default: run but do not count them).
        doc_max: also keep the per-document maximum score of every expert, [G, D, E*E] float32
            (needed for document-level detection metrics; memory grows with the corpus).
        token_classes: optional per-token classifier (e.g. Pygments token types for code); adds
            per-class sums/frequencies.
        token_sample: about this many tokens (drawn deterministically from the tokens the
            classifier applies to, or from all tokens without one) keep their full score
            vector (sparse) for token-level detection metrics.
        progress: tqdm bar in tokens/s (rank 0 only).

    Under torch.distributed (initialised process group) each rank processes every world-th
    window and the statistics are reduced across ranks; every rank returns the full result.
    """
    cfg = model.cfg
    if not hasattr(cfg, "num_routers"):
        raise StatsError(f"{type(model).__name__} has no routers: use monet_interp.stats.units.compute_unit_stats")
    setup = prepare_stream(model, corpus, split=split, labels=labels, max_tokens_per_label=max_tokens_per_label,
                           seq_len=seq_len, batch_size=batch_size, top_k=top_k, fire_threshold=fire_threshold,
                           include_special=include_special, doc_max=doc_max, token_classes=token_classes,
                           token_sample=token_sample)
    plan = setup.plan
    G, H, E = cfg.num_routers, cfg.moe_heads, cfg.moe_experts
    acc = _RoutingAccumulator(setup, G, H, E, cfg.router_layers[-1] + 1, top_k, fire_threshold, doc_max,
                              len(token_classes.class_names) if token_classes is not None else 0)
    timing = stream_corpus(model, setup, acc, batch_size=batch_size, progress=progress, desc="routing stats")
    sample = acc.sample
    np_ = lambda t: t.cpu().numpy()  # noqa: E731
    n_cls = acc.n_classes
    stats = RoutingStats(
        labels=list(plan.labels), label_kinds=list(plan.label_kinds), n_groups=G, n_heads=H, n_experts=E,
        group_layers=[cfg.layers_of_group(g) for g in range(G)],
        tokens=np_(acc.tokens), score_sum=np_(acc.score_sum), fire_count=np_(acc.fire).reshape(-1, G, E, E),
        head_score_sum=np_(acc.head_sum), hist_edges=np_(acc.edges), hist_count=np_(acc.hist),
        topk_score=np.stack([np_(b.score) for b in acc.topk]), topk_key=np.stack([np_(b.key) for b in acc.topk]),
        doc_label=plan.doc_label, doc_index=plan.doc_index,
        doc_length=plan.doc_lengths(),
        fire_threshold=float(fire_threshold), top_k=int(top_k), seq_len=int(seq_len), split=split,
        doc_max=np_(acc.doc_max) if acc.doc_max is not None else None,
        class_names=list(token_classes.class_names) if token_classes is not None else None,
        class_tokens=np_(acc.class_tokens) if n_cls else None,
        class_score_sum=np_(acc.class_sum).reshape(n_cls, G, E, E) if n_cls else None,
        class_fire_count=np_(acc.class_fire).reshape(n_cls, G, E, E) if n_cls else None,
        **(dict(zip(("sample_key", "sample_class", "sample_label", "sample_row", "sample_group", "sample_expert",
                     "sample_score"), sample)) if sample is not None else {}),
        metadata={
            "model": model_description(model),
            "corpus": setup.corpus_meta,
            "settings": setup.settings,
            "timing": {"seconds": timing.seconds, "tokens_run_rank0": timing.tokens_run, "device": str(setup.device)},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
    )
    return stats


__all__ = ["compute_routing_stats", "sparse_expert_scores"]
