"""Documents and windows of a report, planned exactly as the routing statistics plan them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from monet_interp.analyses.report.experts import DEFAULT_CTX_LEN, SPLIT_CANDIDATES, ReportError, first_layer
from monet_interp.data import MemoryCorpus, open_corpus
from monet_interp.stats.stream import special_token_ids


@dataclass
class Document:
    """One document: its full token array as the corpus stores it ([bos, ..., eos])."""

    label: str
    index: int  # position of the document in its label's split (corpus.documents(label, split))
    tokens: np.ndarray
    key: str | None = None


@dataclass
class Window:
    """``tokens = doc.tokens[start:start + len]`` (no bos is added: windows after a document's
    first one start mid-document, as in ``monet_interp.stats.plan_windows``)."""

    index: int
    doc: int  # index into the documents list (the global document id of the plan)
    label: str
    start: int  # document position of the window's first token
    tokens: list[int]

    def doc_position(self, pos: int) -> int:
        """Position in the document's token array (bos = 0) of window position ``pos``."""
        return self.start + pos


def pad_id(model: Any) -> int:
    tok = getattr(model, "tokenizer", None)
    pad = getattr(tok, "pad_token_id", None) if tok is not None else None
    return int(pad if pad is not None else (model.cfg.pad_token_id or 0))


def resolve_split(corpus: Any, split: str | None) -> str:
    """``split`` checked against the corpus; None: "val" (held-out, as the routing statistics)."""
    splits = tuple(getattr(corpus, "splits", SPLIT_CANDIDATES))
    if split is None:
        return next((c for c in SPLIT_CANDIDATES if c in splits), splits[0])
    if split not in splits:
        raise ReportError(f"unknown split {split!r}; the corpus has {', '.join(splits)}")
    return split


def check_labels(corpus: Any, labels: Sequence[str] | None) -> None:
    """ReportError naming every label of ``labels`` that the corpus does not have."""
    available = list(corpus.labels)
    unknown = [lab for lab in (labels or []) if lab not in available]
    if unknown:
        raise ReportError(f"labels {unknown} are not in the corpus; labels: {', '.join(available)}")


def plan_report_windows(model: Any, corpus: Any, *, split: str | None = None, labels: Sequence[str] | None = None,
                        ctx_len: int = DEFAULT_CTX_LEN, max_tokens_per_label: int | None = None
                        ) -> tuple[list[Document], list[Window], str]:
    """Documents and windows exactly as ``monet_interp.stats.compute_routing_stats`` plans them
    (same documents, same windows), so the report's numbers match the routing statistics.
    Returns (documents, windows, split)."""
    from monet_interp.stats.stream import plan_windows

    corpus = open_corpus(corpus, model, verify=False)
    split = resolve_split(corpus, split)
    check_labels(corpus, labels)
    if ctx_len > model.cfg.max_position_embeddings:
        raise ReportError(f"ctx_len={ctx_len} exceeds the model's max_position_embeddings="
                          f"{model.cfg.max_position_embeddings}")
    plan = plan_windows(corpus, list(labels) if labels else None, split, ctx_len, max_tokens_per_label)
    if not len(plan.win_doc):
        raise ReportError(f"the corpus has no tokens in split {split!r} for labels {plan.labels}")
    keys: dict[str, list[str | None]] = {}
    for lab in plan.labels:
        if isinstance(corpus, MemoryCorpus):
            keys[lab] = list(corpus.keys.get(lab, []))
        elif hasattr(corpus, "records"):
            with contextlib.suppress(Exception):  # keys are a nicety
                n = int(plan.doc_index[plan.doc_label == plan.labels.index(lab)].max(initial=-1)) + 1
                keys[lab] = [r.get("key") for r in corpus.records(lab, split, limit=n)]
    documents = []
    for d, arr in enumerate(plan.docs):
        lab = plan.labels[int(plan.doc_label[d])]
        k = int(plan.doc_index[d])
        names = keys.get(lab, [])
        documents.append(Document(lab, k, np.asarray(arr, dtype=np.int64), names[k] if k < len(names) else None))
    top = max(int(d.tokens.max()) for d in documents if len(d.tokens))
    if top >= model.cfg.vocab_size:
        raise ReportError(f"the corpus holds token id {top}, beyond the model's vocabulary ({model.cfg.vocab_size}): "
                          f"it was tokenised with another tokenizer")
    windows = []
    for w, (d, start, n) in enumerate(zip(plan.win_doc.tolist(), plan.win_start.tolist(), plan.win_len.tolist())):
        windows.append(Window(w, d, documents[d].label, start, [int(t) for t in documents[d].tokens[start:start + n]]))
    return documents, windows, split


def batches(windows: Sequence[Window], batch_size: int) -> Iterator[list[Window]]:
    for k in range(0, len(windows), batch_size):
        yield list(windows[k:k + batch_size])


def pad_windows(model: Any, batch: Sequence[Window]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """tokens [b, p], attention mask (None when no padding), counted-token mask [b, p]
    (real tokens that are not bos/eos)."""
    width = max(len(w.tokens) for w in batch)
    tokens = torch.full((len(batch), width), pad_id(model), dtype=torch.long)
    real = torch.zeros((len(batch), width), dtype=torch.bool)
    for row, w in enumerate(batch):
        tokens[row, :len(w.tokens)] = torch.tensor(w.tokens, dtype=torch.long)
        real[row, :len(w.tokens)] = True
    counted = real & ~torch.isin(tokens, torch.tensor(special_token_ids(model), dtype=torch.long))
    mask = None if bool(real.all()) else real.to(model.device)
    return tokens.to(model.device), mask, counted


@dataclass
class WindowBatch:
    """One batch of report windows as :func:`pad_windows` pads them: ``tokens`` [b, p] (on the
    model's device), ``mask`` (None when no padding), ``valid`` [b, p] counted tokens (CPU);
    ``n_tokens`` real tokens run (bos/eos included), as ``monet_interp.stats.stream.Batch``."""

    windows: list[Window]
    tokens: torch.Tensor
    mask: torch.Tensor | None
    valid: torch.Tensor
    n_tokens: int


def window_batches(model: Any, windows: Sequence[Window], batch_size: int) -> Iterator[WindowBatch]:
    """:func:`batches` of ``windows`` (in their order, ``batch_size`` at a time), padded."""
    for batch in batches(windows, batch_size):
        tokens, mask, valid = pad_windows(model, batch)
        yield WindowBatch(batch, tokens, mask, valid, sum(len(w.tokens) for w in batch))


def g_names(cfg: Any, group: int) -> tuple[str, str]:
    layer = first_layer(cfg, group)
    return f"blocks.{layer}.moe.hook_g_row", f"blocks.{layer}.moe.hook_g_col"


__all__ = ["Document", "Window", "WindowBatch", "batches", "check_labels", "g_names", "pad_id", "pad_windows",
           "plan_report_windows", "resolve_split", "window_batches"]
