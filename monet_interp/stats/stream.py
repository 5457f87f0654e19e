"""The corpus walk shared by every streaming statistics pass: windows, batches, token classes and
the token sample (the pass itself: :mod:`monet_interp.stats.corpus_pass`).

Windows: each document ([bos, ..., eos]) is cut into consecutive windows of ``seq_len`` tokens
(no overlap; a window after the first starts without bos); a window sees no context from the
previous one. Windows of one label are batched together, longest first, right-padded; causal
attention and running-statistics routing make the padding invisible to real tokens. By default
bos/eos tokens are run through the model but not counted (``include_special=False``): every
document's bos has the same routing, which would otherwise fill top-k lists with copies of it.

A token is identified by ``key = doc << 24 | pos`` (doc = global document id of the run, pos =
position in the document), whatever the batching or the number of processes.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch


POS_BITS = 24  # key = doc << POS_BITS | pos
POS_MASK = (1 << POS_BITS) - 1


class StatsError(ValueError):
    """Invalid arguments or inconsistent statistics."""



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

    def doc_lengths(self) -> np.ndarray:
        """int64 [D] tokens of each (truncated) document."""
        return np.array([len(d) for d in self.docs], dtype=np.int64)

    def doc_tokens_per_label(self) -> np.ndarray:
        return np.bincount(self.doc_label, weights=self.doc_lengths(), minlength=len(self.labels)).astype(np.int64)

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


def special_token_ids(model: Any) -> list[int]:
    cfg = model.cfg
    return [int(x) for x in (getattr(cfg, "bos_token_id", None), getattr(cfg, "eos_token_id", None)) if x is not None]
