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

Windows: each document ([bos, ..., eos]) is cut into consecutive windows of ``seq_len`` tokens
(no overlap; a window after the first starts without bos); a window sees no context from the
previous one. Windows of one label are batched together, longest first, right-padded; causal
attention and running-statistics routing make the padding invisible to real tokens. By default
bos/eos tokens are run through the model but not counted (``include_special=False``): every
document's bos has the same routing, which would otherwise fill top-k lists with copies of it.

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

import hashlib
import json
import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from monet_interp.progress import progress_bar


class _LazyDistributed:
    """``monet_interp.stats.distributed``, imported on first use (so that
    ``python -m monet_interp.stats.distributed`` does not find itself imported already)."""

    def __getattr__(self, name: str) -> Any:
        from monet_interp.stats import distributed

        return getattr(distributed, name)


D = _LazyDistributed()
FORMAT_VERSION = 1
POS_BITS = 24  # key = doc << POS_BITS | pos
POS_MASK = (1 << POS_BITS) - 1
HIST_LOW = 1e-4  # first histogram edge above 0
HIST_BINS = 64
ARRAYS_NAME = "arrays.npz"
META_NAME = "metadata.json"


class StatsError(ValueError):
    """Invalid arguments or inconsistent statistics."""


class StatsMetadataError(StatsError):
    """Saved statistics do not match the model/corpus they are loaded for, or are damaged."""


# ============================================================================================
# corpus interface and token classes
# ============================================================================================


@runtime_checkable
class CorpusLike(Protocol):
    """What the statistics read from a corpus (``monet_interp.data.Corpus`` has all of it).

    ``documents(label, split)`` returns one 1-D integer token array per document, each
    [bos, ..., eos], in a fixed order (the document index used in results is the position in
    this list). ``manifest``/``path`` are optional: used only to fingerprint the corpus.
    """

    labels: list[str]

    def label_kind(self, label: str) -> str: ...

    def documents(self, label: str, split: str) -> Sequence[np.ndarray]: ...


@runtime_checkable
class TokenClassifier(Protocol):
    """Assigns each token of a document a class (e.g. a Pygments token type), -1 for none.

    ``class_names`` names classes 0..C-1. ``applies_to(label)`` says whether documents of that
    label get classes at all (e.g. only code labels). ``classes(label, doc_index, tokens)`` gets
    the document's full token array ([bos, ..., eos]) and returns an integer array of the same
    length. See ``monet_interp.analyses.token_types.PygmentsTokenTyper``.
    """

    class_names: Sequence[str]

    def applies_to(self, label: str) -> bool: ...

    def classes(self, label: str, doc_index: int, tokens: np.ndarray) -> np.ndarray: ...


def corpus_fingerprint(corpus: Any, plan: WindowPlan | None = None) -> str:
    """sha256 identifying a corpus: of manifest.json when there is one (a built Corpus), else of
    the planned documents' tokens (a stand-in corpus)."""
    path = getattr(corpus, "path", None)
    if path is not None and (Path(path) / "manifest.json").is_file():
        return hashlib.sha256((Path(path) / "manifest.json").read_bytes()).hexdigest()
    manifest = getattr(corpus, "manifest", None)
    if isinstance(manifest, dict):
        return hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()
    h = hashlib.sha256()
    if plan is not None:
        for lab in plan.labels:
            h.update(lab.encode() + b"\0")
        for doc in plan.docs:
            h.update(np.ascontiguousarray(doc, dtype=np.int64).tobytes())
            h.update(b"|")
    return h.hexdigest()


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the routers' weights and running statistics (or, without routers, of the
    embedding): cheap, and different for any two differently trained checkpoints."""
    h = hashlib.sha256()
    items = [(n, t) for n, t in model.state_dict().items() if ".router." in n or ".moe.router" in n]
    if not items:
        items = [(n, t) for n, t in model.state_dict().items() if n.startswith("embed")]
    for name, tensor in sorted(items, key=lambda x: x[0]):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def model_description(model: torch.nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "cfg", None)
    config = cfg.to_dict() if cfg is not None and hasattr(cfg, "to_dict") else {}
    return {
        "class": type(model).__name__,
        "name_or_path": getattr(model, "checkpoint_path", None),
        "config": json.loads(json.dumps(config, default=str)),
        "fingerprint": model_fingerprint(model),
    }


# ============================================================================================
# windows and batches
# ============================================================================================


@dataclass
class WindowPlan:
    """Documents of the selected labels cut into windows. Global document id d indexes
    ``doc_label``/``doc_index``/``docs`` (``doc_index`` = position in corpus.documents(label))."""

    labels: list[str]
    label_kinds: list[str]
    split: str
    seq_len: int
    docs: list[np.ndarray]  # token arrays (truncated to the token budget)
    doc_label: np.ndarray  # int32 [D]
    doc_index: np.ndarray  # int64 [D]
    win_doc: np.ndarray  # int64 [W]
    win_start: np.ndarray  # int64 [W]
    win_len: np.ndarray  # int64 [W]

    @property
    def n_docs(self) -> int:
        return len(self.docs)

    def doc_tokens_per_label(self) -> np.ndarray:
        lengths = np.array([len(d) for d in self.docs], dtype=np.int64)
        return np.bincount(self.doc_label, weights=lengths, minlength=len(self.labels)).astype(np.int64)

    def shard(self, rank: int, world: int) -> np.ndarray:
        """Window ids of one rank: every world-th window of each label, in canonical order."""
        return np.arange(len(self.win_doc))[rank::world] if world > 1 else np.arange(len(self.win_doc))

    def batches(self, windows: np.ndarray, batch_size: int) -> list[np.ndarray]:
        """Single-label batches of window ids, longest windows first (little padding)."""
        out: list[np.ndarray] = []
        win_label = self.doc_label[self.win_doc[windows]]
        for lab in range(len(self.labels)):
            mine = windows[win_label == lab]
            mine = mine[np.argsort(-self.win_len[mine], kind="stable")]
            out += [mine[k:k + batch_size] for k in range(0, len(mine), batch_size)]
        return out


def plan_windows(corpus: CorpusLike, labels: Sequence[str] | None, split: str, seq_len: int,
                 max_tokens_per_label: int | None = None) -> WindowPlan:
    """Windows of ``seq_len`` tokens over every document of ``labels`` (default: all), taking
    documents in order until ``max_tokens_per_label`` document tokens (the last one truncated)."""
    if seq_len < 1:
        raise StatsError(f"seq_len must be positive, got {seq_len}")
    labels = list(corpus.labels if labels is None else labels)
    if not labels:
        raise StatsError("no labels selected")
    if len(set(labels)) != len(labels):
        raise StatsError(f"labels repeat: {labels}")
    docs: list[np.ndarray] = []
    doc_label: list[int] = []
    doc_index: list[int] = []
    for li, lab in enumerate(labels):
        budget = max_tokens_per_label if max_tokens_per_label is not None else math.inf
        for k, doc in enumerate(corpus.documents(lab, split)):
            if budget <= 0:
                break
            if len(doc) == 0:
                continue
            if len(doc) > POS_MASK:
                raise StatsError(f"document {k} of {lab!r} has {len(doc)} tokens; at most {POS_MASK} are supported")
            if len(doc) > budget:
                doc = doc[:int(budget)]
            docs.append(doc)
            doc_label.append(li)
            doc_index.append(k)
            budget -= len(doc)
    lengths = np.array([len(d) for d in docs], dtype=np.int64)
    per_doc = -(-lengths // seq_len)
    win_doc = np.repeat(np.arange(len(docs), dtype=np.int64), per_doc)
    first = np.repeat(np.cumsum(per_doc) - per_doc, per_doc)
    win_start = (np.arange(len(win_doc), dtype=np.int64) - first) * seq_len
    win_len = np.minimum(seq_len, lengths[win_doc] - win_start) if len(win_doc) else np.zeros(0, np.int64)
    return WindowPlan(labels, [corpus.label_kind(lab) for lab in labels], split, seq_len, docs,
                      np.array(doc_label, dtype=np.int32), np.array(doc_index, dtype=np.int64),
                      win_doc, win_start, win_len.astype(np.int64))


@dataclass
class Batch:
    """One batch: ``tokens`` [B, P] for the model; ``valid`` [B*P] flat indices of the positions
    that are counted; per counted token its global ``doc``, position ``pos`` and ``key``."""

    label: int
    tokens: torch.Tensor
    valid: torch.Tensor
    doc: torch.Tensor
    pos: torch.Tensor
    n_tokens: int  # tokens run (including uncounted specials)
    classes: torch.Tensor | None = None  # int64 [T] class per counted token, -1 none

    @property
    def key(self) -> torch.Tensor:
        return (self.doc << POS_BITS) | self.pos


class _ClassCache:
    def __init__(self, classifier: TokenClassifier, plan: WindowPlan, size: int = 2048):
        self.classifier, self.plan, self.size = classifier, plan, size
        self.cache: OrderedDict[int, np.ndarray | None] = OrderedDict()
        self.applies = [bool(classifier.applies_to(lab)) for lab in plan.labels]

    def __call__(self, doc: int) -> np.ndarray | None:
        if doc in self.cache:
            self.cache.move_to_end(doc)
            return self.cache[doc]
        lab = int(self.plan.doc_label[doc])
        out = None
        if self.applies[lab]:
            tokens = self.plan.docs[doc]
            cls = np.asarray(self.classifier.classes(self.plan.labels[lab], int(self.plan.doc_index[doc]), tokens))
            if cls.shape[0] < len(tokens):
                raise StatsError(f"token classifier returned {cls.shape[0]} classes for a document of {len(tokens)} tokens")
            out = cls[:len(tokens)].astype(np.int64)
        self.cache[doc] = out
        if len(self.cache) > self.size:
            self.cache.popitem(last=False)
        return out


def make_batch(plan: WindowPlan, windows: np.ndarray, device: torch.device, *, pad_id: int = 0,
               skip_ids: Sequence[int] = (), classes: _ClassCache | None = None) -> Batch:
    """Assemble windows (one label) into a right-padded token batch."""
    lengths = plan.win_len[windows]
    width = int(lengths.max())
    tokens = np.full((len(windows), width), pad_id, dtype=np.int64)
    cls = np.full((len(windows), width), -1, dtype=np.int64) if classes is not None else None
    for r, w in enumerate(windows):
        d, s, n = int(plan.win_doc[w]), int(plan.win_start[w]), int(lengths[r])
        tokens[r, :n] = plan.docs[d][s:s + n]
        if cls is not None:
            c = classes(d)
            if c is not None:
                cls[r, :n] = c[s:s + n]
    mask = np.arange(width)[None, :] < lengths[:, None]
    if skip_ids:
        mask &= ~np.isin(tokens, np.asarray(list(skip_ids)))
    valid = np.flatnonzero(mask)
    rows, cols = valid // width, valid % width
    doc = plan.win_doc[windows][rows]
    pos = plan.win_start[windows][rows] + cols
    label = int(plan.doc_label[plan.win_doc[windows[0]]])
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
    return Batch(label, t(tokens), t(valid.astype(np.int64)), t(doc.astype(np.int64)), t(pos.astype(np.int64)),
                 int(lengths.sum()), t(cls.reshape(-1)[valid]) if cls is not None else None)


def sample_mask(key: torch.Tensor, rate: float) -> torch.Tensor:
    """Deterministic pseudo-random subset of tokens (by their key): True for about ``rate`` of them.
    The same token is chosen whatever the batching or number of processes."""
    if rate <= 0:
        return torch.zeros_like(key, dtype=torch.bool)
    if rate >= 1:
        return torch.ones_like(key, dtype=torch.bool)
    mixed = (key + 0x632BE5AB) * -7046029254386353131  # 0x9E3779B97F4A7C15 as int64; wraps
    mixed = mixed ^ (mixed >> 29)
    mixed = mixed * -4658895280553007687  # 0xBF58476D1CE4E5B9 as int64
    return ((mixed >> 40) & 0xFFFFFF) < int(rate * (1 << 24))


# ============================================================================================
# sparse expert scores and top-k buffers
# ============================================================================================


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


def _unit_score_order(unit: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """int64 that sorts ascending by unit, then descending by float32 score."""
    bits = score.contiguous().view(torch.int32).long()
    monotone = torch.where(bits >= 0, bits + (1 << 31), (1 << 31) - 1 - (bits & 0x7FFFFFFF))  # float order
    return (unit.long() << 32) | ((1 << 32) - 1 - monotone)


def merge_topk(scores: torch.Tensor, keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top k along the last axis by (score descending, key ascending). Empty slots: -inf / -1."""
    order = torch.argsort(keys, dim=-1, stable=True)
    scores, keys = scores.gather(-1, order), keys.gather(-1, order)
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)
    return scores.gather(-1, order)[..., :k], keys.gather(-1, order)[..., :k]


class TopKBuffer:
    """Bounded top-k contexts of ``n_units`` units: scores [n, k] (sorted, -inf empty) and keys."""

    def __init__(self, n_units: int, k: int, device: torch.device):
        self.k = k
        self.score = torch.full((n_units, k), -math.inf, dtype=torch.float32, device=device)
        self.key = torch.full((n_units, k), -1, dtype=torch.long, device=device)
        self.kth = torch.full((n_units,), -math.inf, dtype=torch.float32, device=device)  # = score[:, -1]

    def update(self, unit: torch.Tensor, score: torch.Tensor, key: torch.Tensor) -> None:
        """Merge candidate entries (each (unit, key) at most once, and not already held)."""
        if self.k == 0 or unit.numel() == 0:
            return
        keep = score >= self.kth.index_select(0, unit)
        if not bool(keep.all()):
            unit, score, key = unit[keep], score[keep], key[keep]
        if unit.numel() == 0:
            return
        score = score.float() + 0.0  # (-0.0 -> +0.0)
        composite = _unit_score_order(unit, score)
        order = torch.argsort(composite)  # (unit asc, score desc); ties in any order
        unit_s, comp_s = unit[order], composite[order]
        rank = torch.arange(unit.numel(), device=unit.device) - torch.searchsorted(unit_s, unit_s)
        sel = rank < self.k
        # The kept set is exact unless a tie straddles the k-th place (then the smaller keys must
        # win): only then pay for a stable sort by key first.
        cut = (rank[1:] == self.k) & (comp_s[1:] == comp_s[:-1])
        if bool(cut.any()):
            order = torch.argsort(key, stable=True)
            order = order.index_select(0, torch.argsort(composite.index_select(0, order), stable=True))
        unit, score, key = unit[order], score[order], key[order]
        unit, score, key, rank = unit[sel], score[sel], key[sel], rank[sel]
        touched, row = torch.unique_consecutive(unit, return_inverse=True)
        width = int(rank.max()) + 1  # candidates per unit, at most k
        new_s = torch.full((touched.numel(), width), -math.inf, dtype=torch.float32, device=unit.device)
        new_k = torch.full((touched.numel(), width), -1, dtype=torch.long, device=unit.device)
        new_s[row, rank] = score
        new_k[row, rank] = key
        s, kk = merge_topk(torch.cat([self.score[touched], new_s], 1), torch.cat([self.key[touched], new_k], 1), self.k)
        self.score[touched] = s
        self.key[touched] = kk
        self.kth[touched] = s[:, -1]

    def update_dense(self, acts: torch.Tensor, key: torch.Tensor) -> None:
        """Candidates from dense activations [T, n] of tokens with keys [T]."""
        if self.k == 0 or acts.numel() == 0:
            return
        t, u = (acts >= self.kth[None, :]).nonzero(as_tuple=True)
        self.update(u, acts[t, u], key[t])

    def reduce(self) -> None:
        """Merge the buffers of all ranks (torch.distributed); a no-op in one process."""
        self.score, self.key = D.all_gather_topk(self.score, self.key, self.k, merge_topk)
        if self.k:
            self.kth = self.score[:, -1].contiguous()


def contexts_frame(score: np.ndarray, key: np.ndarray, labels: Sequence[str], doc_label: np.ndarray,
                   doc_index: np.ndarray):
    """DataFrame of top-k contexts (rank, score, label, doc, pos, doc_global) from one buffer row."""
    import pandas as pd

    ok = key >= 0
    score, key = score[ok], key[ok]
    doc = key >> POS_BITS
    return pd.DataFrame({
        "rank": np.arange(len(score)),
        "score": score.astype(np.float64),
        "label": [labels[int(doc_label[d])] for d in doc],
        "doc": doc_index[doc].astype(np.int64),
        "pos": (key & POS_MASK).astype(np.int64),
        "doc_global": doc.astype(np.int64),
    })


# ============================================================================================
# save / load helpers
# ============================================================================================


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def save_arrays(folder: str | Path, kind: str, arrays: dict[str, np.ndarray | None], meta: dict[str, Any]) -> Path:
    """Write ``arrays.npz`` then ``metadata.json`` (with the npz's sha256) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    present = {k: v for k, v in arrays.items() if v is not None}
    tmp = folder / (ARRAYS_NAME + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **present)
    tmp.replace(folder / ARRAYS_NAME)
    meta = dict(meta, kind=kind, format_version=FORMAT_VERSION,
                arrays_sha256=hashlib.sha256((folder / ARRAYS_NAME).read_bytes()).hexdigest(),
                arrays={k: [list(v.shape), str(v.dtype)] for k, v in present.items()})
    (folder / (META_NAME + ".tmp")).write_text(json.dumps(meta, indent=1, default=_json_default) + "\n")
    (folder / (META_NAME + ".tmp")).replace(folder / META_NAME)
    return folder


def load_arrays(folder: str | Path, kind: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    folder = Path(folder)
    if not (folder / META_NAME).is_file() or not (folder / ARRAYS_NAME).is_file():
        raise StatsMetadataError(f"{folder} has no {META_NAME} + {ARRAYS_NAME}: not saved statistics")
    meta = json.loads((folder / META_NAME).read_text())
    if meta.get("kind") != kind:
        raise StatsMetadataError(f"{folder} holds {meta.get('kind')!r} statistics, expected {kind!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise StatsMetadataError(f"{folder}: format_version {meta.get('format_version')}, expected {FORMAT_VERSION}")
    digest = hashlib.sha256((folder / ARRAYS_NAME).read_bytes()).hexdigest()
    if digest != meta.get("arrays_sha256"):
        raise StatsMetadataError(f"{folder / ARRAYS_NAME} does not match the sha256 in {META_NAME} (damaged?)")
    with np.load(folder / ARRAYS_NAME, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    for name, (shape, dtype) in meta.get("arrays", {}).items():
        if name not in arrays or list(arrays[name].shape) != shape:
            raise StatsMetadataError(f"{folder}: array {name!r} missing or of the wrong shape")
    return arrays, meta


def check_metadata(meta: dict[str, Any], model: Any = None, corpus: Any = None, where: str = "") -> None:
    """Raise StatsMetadataError if ``model``/``corpus`` are not the ones the statistics were made
    with (model: config and router fingerprint; corpus: manifest sha256)."""
    if model is not None:
        want = model_description(model)
        have = meta.get("model", {})
        if have.get("config") != want["config"]:
            raise StatsMetadataError(f"{where}: statistics were computed for a model with a different config")
        if have.get("fingerprint") != want["fingerprint"]:
            raise StatsMetadataError(f"{where}: statistics were computed with different model weights "
                                     f"(router fingerprint {str(have.get('fingerprint'))[:12]} != {want['fingerprint'][:12]})")
    if corpus is not None:
        have_hash = meta.get("corpus", {}).get("fingerprint")
        path = getattr(corpus, "path", None)
        want_hash = corpus_fingerprint(corpus) if path is not None or isinstance(getattr(corpus, "manifest", None), dict) else None
        if want_hash is not None and have_hash != want_hash:
            raise StatsMetadataError(f"{where}: statistics were computed on a different corpus "
                                     f"(manifest sha256 {str(have_hash)[:12]} != {want_hash[:12]})")
        missing = [lab for lab in meta.get("labels", []) if lab not in list(corpus.labels)]
        if missing:
            raise StatsMetadataError(f"{where}: labels {missing} are not in this corpus")


# ============================================================================================
# RoutingStats
# ============================================================================================


@dataclass
class RoutingStats:
    """Routing statistics of every expert of every routing group over a labelled token stream.

    Axes: L labels, G routing groups (one per router; a group's layers share its routing), H
    routing heads, E halves per axis (expert (i, j), flat id i*E + j), D documents, k top-k slots.
    All arrays are numpy (on CPU).

    Fields:
        labels, label_kinds: label names and their kinds ("code" / "natural").
        tokens: int64 [L]            tokens counted per label (bos/eos excluded by default).
        score_sum: float64 [L,G,E,E] sum over the label's tokens of s_e(t).
        fire_count: int64 [L,G,E,E]  tokens with s_e(t) > fire_threshold.
        head_score_sum: float64 [G,H,E,E] sum over all tokens of g1[t,h,i] g2[t,h,j].
        hist_edges: float64 [B+1]    score histogram edges: 0, then log-spaced 1e-4 .. H.
        hist_count: int64 [L,G,B]    (token, expert) pairs with score in each bin (score > 0 only;
                                     pairs with score 0: tokens*E^2 - hist_count.sum(-1)).
        topk_score: float32 [G,E*E,k], topk_key: int64 [G,E*E,k]  top-k contexts per expert,
                                     sorted by score desc then key asc; empty slots -inf / -1.
                                     key = doc << 24 | pos (see ``top_contexts``).
        doc_label: int32 [D], doc_index: int64 [D], doc_length: int64 [D]  the documents used
                                     (global id d; doc_index = position in corpus.documents).
        fire_threshold, top_k, seq_len, split: settings.
        doc_max: float32 [G,D,E*E] or None   max over each document's tokens of s_e(t) (opt-in).
        class_names / class_tokens [C] / class_score_sum [C,G,E,E] / class_fire_count [C,G,E,E]:
                                     per token class (e.g. Pygments types), when a classifier ran.
        sample_key [S], sample_class [S], sample_label [S]: a deterministic token sample;
        sample_row/_group/_expert/_score [M]: its nonzero scores (sparse; see ``sample_scores``).
        metadata: model, corpus fingerprint, settings, timing.
    """

    labels: list[str]
    label_kinds: list[str]
    n_groups: int
    n_heads: int
    n_experts: int
    group_layers: list[list[int]]
    tokens: np.ndarray
    score_sum: np.ndarray
    fire_count: np.ndarray
    head_score_sum: np.ndarray
    hist_edges: np.ndarray
    hist_count: np.ndarray
    topk_score: np.ndarray
    topk_key: np.ndarray
    doc_label: np.ndarray
    doc_index: np.ndarray
    doc_length: np.ndarray
    fire_threshold: float
    top_k: int
    seq_len: int
    split: str
    doc_max: np.ndarray | None = None
    class_names: list[str] | None = None
    class_tokens: np.ndarray | None = None
    class_score_sum: np.ndarray | None = None
    class_fire_count: np.ndarray | None = None
    sample_key: np.ndarray | None = None
    sample_class: np.ndarray | None = None
    sample_label: np.ndarray | None = None
    sample_row: np.ndarray | None = None
    sample_group: np.ndarray | None = None
    sample_expert: np.ndarray | None = None
    sample_score: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ indexing helpers
    def label_index(self, label: str | int) -> int:
        if isinstance(label, (int, np.integer)):
            return int(label)
        try:
            return self.labels.index(label)
        except ValueError:
            raise KeyError(f"label {label!r} not in statistics; labels: {self.labels}") from None

    def expert_id(self, i: int, j: int) -> int:
        return int(i) * self.n_experts + int(j)

    def expert_ij(self, e: int) -> tuple[int, int]:
        return divmod(int(e), self.n_experts)

    @property
    def n_docs(self) -> int:
        return len(self.doc_label)

    @property
    def total_tokens(self) -> int:
        return int(self.tokens.sum())

    # ------------------------------------------------------------------ derived statistics
    def mean_score(self) -> np.ndarray:
        """r_e(D): [L, G, E, E] mean routing score per label (per token; 0 for an empty label)."""
        return self.score_sum / np.maximum(self.tokens, 1)[:, None, None, None]

    def overall_mean_score(self) -> np.ndarray:
        """[G, E, E] mean score over all counted tokens (token-weighted across labels)."""
        return self.score_sum.sum(0) / max(self.total_tokens, 1)

    def profile(self) -> np.ndarray:
        """q_e(D) = r_e(D) / sum_D' r_e(D'): [L, G, E, E]; NaN for experts never routed."""
        r = self.mean_score()
        total = r.sum(0, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, r / np.where(total > 0, total, 1), np.nan)

    def frequency(self) -> np.ndarray:
        """[L, G, E, E] share of the label's tokens with s_e(t) > fire_threshold."""
        return self.fire_count / np.maximum(self.tokens, 1)[:, None, None, None]

    def head_mean_score(self) -> np.ndarray:
        """[G, H, E, E] per-head mean of g1[h,i] g2[h,j] over all counted tokens."""
        return self.head_score_sum / max(self.total_tokens, 1)

    def class_mean_score(self) -> np.ndarray | None:
        """[C, G, E, E] mean score per token class (None without a classifier)."""
        if self.class_score_sum is None:
            return None
        return self.class_score_sum / np.maximum(self.class_tokens, 1)[:, None, None, None]

    def histogram(self, group: int | None = None, label: str | int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(edges [B+1], counts [B]) of positive scores, summed over the unspecified axes."""
        h = self.hist_count
        h = h[self.label_index(label)][None] if label is not None else h
        h = h[:, group][:, None] if group is not None else h
        return self.hist_edges, h.sum((0, 1))

    def top_contexts(self, group: int, i: int, j: int | None = None):
        """Top-k contexts of expert (i, j) of ``group`` (or flat id i when j is None) as a
        DataFrame: rank, score, label, doc (index into corpus.documents(label, split)), pos
        (position in that document's token array, bos = 0), doc_global."""
        e = int(i) if j is None else self.expert_id(i, j)
        return contexts_frame(self.topk_score[group, e], self.topk_key[group, e], self.labels,
                              self.doc_label, self.doc_index)

    def sample_scores(self, group: int) -> np.ndarray:
        """[S, E*E] float32 dense scores of the sampled tokens in one group (zeros elsewhere)."""
        if self.sample_key is None:
            raise StatsError("no token sample: compute with token_sample > 0")
        out = np.zeros((len(self.sample_key), self.n_experts ** 2), dtype=np.float32)
        m = self.sample_group == group
        out[self.sample_row[m], self.sample_expert[m]] = self.sample_score[m]
        return out

    def units(self, group: int):
        """This group's experts as a generic :class:`monet_interp.stats.units.UnitStats`
        (units = flat expert ids i*E + j), for the monosemanticity analyses."""
        from monet_interp.stats.units import unit_stats_from_routing

        return unit_stats_from_routing(self, group)

    # ------------------------------------------------------------------ save / load
    _ARRAYS = ("tokens", "score_sum", "fire_count", "head_score_sum", "hist_edges", "hist_count", "topk_score",
               "topk_key", "doc_label", "doc_index", "doc_length", "doc_max", "class_tokens", "class_score_sum",
               "class_fire_count", "sample_key", "sample_class", "sample_label", "sample_row", "sample_group",
               "sample_expert", "sample_score")
    _SCALARS = ("labels", "label_kinds", "n_groups", "n_heads", "n_experts", "group_layers", "fire_threshold", "top_k",
                "seq_len", "split", "class_names")

    def save(self, folder: str | Path) -> Path:
        """Write arrays.npz + metadata.json (model, corpus fingerprint, settings) into ``folder``."""
        meta = dict(self.metadata)
        meta.update({k: getattr(self, k) for k in self._SCALARS})
        return save_arrays(folder, "routing_stats", {k: getattr(self, k) for k in self._ARRAYS}, meta)

    @classmethod
    def load(cls, folder: str | Path, *, model: Any = None, corpus: Any = None) -> RoutingStats:
        """Read statistics saved by :meth:`save`. Checks the file hash; with ``model`` and/or
        ``corpus`` also checks that they are the ones the statistics were computed with."""
        arrays, meta = load_arrays(folder, "routing_stats")
        check_metadata(meta, model, corpus, str(folder))
        scalars = {k: meta.get(k) for k in cls._SCALARS}
        metadata = {k: v for k, v in meta.items() if k not in cls._SCALARS}
        return cls(**scalars, **{k: arrays.get(k) for k in cls._ARRAYS}, metadata=metadata)


# ============================================================================================
# the streaming pass
# ============================================================================================


class _RoutingAccumulator:
    def __init__(self, n_labels: int, G: int, H: int, E: int, top_k: int, fire_threshold: float,
                 device: torch.device, n_docs: int, doc_max: bool, n_classes: int, sample_rate: float):
        self.G, self.H, self.E, self.thr = G, H, E, float(fire_threshold)
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
        self.sample_rate = sample_rate
        self.samples: list[tuple[torch.Tensor, ...]] = []  # (key, class, label) per batch
        self.sample_entries: list[tuple[torch.Tensor, ...]] = []  # (key, group, expert, score)

    def add_batch(self, batch: Batch, routers: Sequence[Any]) -> None:
        lab = batch.label
        n = batch.valid.numel()
        self.tokens[lab] += n
        if n == 0:
            return
        key = batch.key
        cls = batch.classes
        if self.n_classes and cls is not None:
            ok = cls >= 0
            self.class_tokens += torch.bincount(cls[ok], minlength=self.n_classes)
        sampled = sample_mask(key, self.sample_rate) if self.sample_rate > 0 else None
        if sampled is not None and self.n_classes and cls is not None:
            sampled &= cls >= 0  # with a classifier, sample classified tokens only
        if sampled is not None and bool(sampled.any()):
            c = cls[sampled] if cls is not None else torch.full_like(key[sampled], -1)
            self.samples.append((key[sampled], c, torch.full_like(c, lab)))
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

    def reduce(self) -> None:
        for name in ("tokens", "score_sum", "fire", "head_sum", "hist"):
            D.all_reduce_(getattr(self, name), "sum")
        if self.n_classes:
            for name in ("class_tokens", "class_sum", "class_fire"):
                D.all_reduce_(getattr(self, name), "sum")
        if self.doc_max is not None:
            D.all_reduce_(self.doc_max, "max")
        for buf in self.topk:
            buf.reduce()


def _gather_sample(samples, entries, world: int) -> tuple[np.ndarray, ...] | None:
    """Concatenate the token sample (all ranks), sorted by key; entries refer to sample rows."""
    cat = lambda parts, i, dt: (torch.cat([p[i] for p in parts]).cpu().numpy() if parts  # noqa: E731
                                else np.zeros(0, dt))
    local = (cat(samples, 0, np.int64), cat(samples, 1, np.int64), cat(samples, 2, np.int64),
             cat(entries, 0, np.int64), cat(entries, 1, np.int64), cat(entries, 2, np.int64),
             cat(entries, 3, np.float32))
    parts = D.all_gather_object(local) if world > 1 else [local]
    key, cls, lab, ekey, grp, exp, score = (np.concatenate([p[i] for p in parts]) for i in range(7))
    order = np.argsort(key, kind="stable")
    key, cls, lab = key[order], cls[order], lab[order]
    row = np.searchsorted(key, ekey)
    eorder = np.lexsort((exp, grp, row))
    return (key, cls.astype(np.int16), lab.astype(np.int32), row[eorder].astype(np.int64),
            grp[eorder].astype(np.int16), exp[eorder].astype(np.int64), score[eorder].astype(np.float32))


def _progress_bar(total: int, enabled: bool, desc: str):
    return progress_bar(total=total, unit="tok", unit_scale=True, desc=desc, disable=not enabled, dynamic_ncols=True,
                        smoothing=0.1)


def special_token_ids(model: Any) -> list[int]:
    cfg = model.cfg
    return [int(x) for x in (getattr(cfg, "bos_token_id", None), getattr(cfg, "eos_token_id", None)) if x is not None]


@dataclass
class StreamSetup:
    """What both streaming passes (routing statistics, unit statistics) prepare before their loop:
    the window plan, the token-class cache, the token-sample rate, this rank's windows, the token
    ids not counted, and the settings/corpus metadata both record."""

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
    :func:`compute_routing_stats` for their meaning)."""
    max_pos = getattr(model.cfg, "max_position_embeddings", None)
    if max_pos is not None and seq_len > max_pos:
        raise StatsError(f"seq_len={seq_len} exceeds the model's max_position_embeddings={max_pos}")
    if batch_size < 1 or top_k < 0:
        raise StatsError("batch_size must be >= 1 and top_k >= 0")
    rank, world = D.rank_world()
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
    return StreamSetup(plan, classes, rate, plan.shard(rank, world), [] if include_special else special_token_ids(model),
                       rank, world, next(model.parameters()).device, settings, corpus_meta)


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
    plan, rate, world, device = setup.plan, setup.rate, setup.world, setup.device
    G, H, E = cfg.num_routers, cfg.moe_heads, cfg.moe_experts
    acc = _RoutingAccumulator(len(plan.labels), G, H, E, top_k, fire_threshold, device, plan.n_docs, doc_max,
                              len(token_classes.class_names) if token_classes is not None else 0, rate)
    stop = cfg.router_layers[-1] + 1
    start = time.perf_counter()
    run_tokens = 0
    with setup.progress_bar(progress, "routing stats") as bar:
        for windows in plan.batches(setup.mine, batch_size):
            batch = make_batch(plan, windows, device, skip_ids=setup.skip, classes=setup.classes)
            _, routers = model(batch.tokens, return_type=None, stop_at_layer=stop, return_routing=True)
            acc.add_batch(batch, routers)
            run_tokens += batch.n_tokens
            bar.update(batch.n_tokens)
    acc.reduce()
    sample = _gather_sample(acc.samples, acc.sample_entries, world) if rate > 0 else None
    elapsed = time.perf_counter() - start
    np_ = lambda t: t.cpu().numpy()  # noqa: E731
    n_cls = acc.n_classes
    stats = RoutingStats(
        labels=list(plan.labels), label_kinds=list(plan.label_kinds), n_groups=G, n_heads=H, n_experts=E,
        group_layers=[cfg.layers_of_group(g) for g in range(G)],
        tokens=np_(acc.tokens), score_sum=np_(acc.score_sum), fire_count=np_(acc.fire).reshape(-1, G, E, E),
        head_score_sum=np_(acc.head_sum), hist_edges=np_(acc.edges), hist_count=np_(acc.hist),
        topk_score=np.stack([np_(b.score) for b in acc.topk]), topk_key=np.stack([np_(b.key) for b in acc.topk]),
        doc_label=plan.doc_label, doc_index=plan.doc_index,
        doc_length=np.array([len(d) for d in plan.docs], dtype=np.int64),
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
            "timing": {"seconds": elapsed, "tokens_run_rank0": run_tokens, "device": str(device)},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
    )
    return stats
