"""A corpus held in memory: the reading interface of :class:`monet_interp.data.corpus.Corpus`
(labels, splits, label_kind, documents, tokens, stats, texts, tokenizer) over token arrays.

    from monet_interp.data import MemoryCorpus
    corpus = MemoryCorpus.from_streams({"python": {"train": ids, "test": ids2}}, kinds={"python": "code"})
    corpus = MemoryCorpus.from_documents({"python": [doc0, doc1]})   # one split, "all"
    corpus = text_corpus(model, {"python": ["def f(): ...", ...]})     # tokenised with the model's tokenizer

Every analysis and the statistics read a corpus through these methods, so a MemoryCorpus stands in
for a built corpus directory in tests, for token streams that do not come from one, and for a
plain-text folder (``<label>/*.txt``, :func:`text_folder_corpus`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import Integer

from monet_interp.data.corpus import CorpusError

STREAM_SPLITS = ("train", "val", "test")
ALL_SPLIT = "all"


class CorpusSpecError(CorpusError, ValueError):
    """A corpus specification that cannot be opened (see :func:`monet_interp.data.open_corpus`)."""


class MemoryCorpus:
    """Token arrays per (label, split), read like a built :class:`~monet_interp.data.corpus.Corpus`.

    documents: {label: {split: [1-D int arrays]}} (label order kept). kinds: {label: "code" |
    "natural"} (default "natural"). bytes_per_token: bytes of text per token for :meth:`stats`
    (a number, or {label: number}). splits: the split names (a missing split reads as empty).
    streams: True when every "document" is a bare token stream (built by :meth:`from_streams`):
    :meth:`stats` then counts no documents, so every token is predicted. any_split: every split
    name reads the label's only split (a corpus with one split, "all"). keys: {label: [document
    key]} (e.g. file names); texts: {label: [text]} aligned with the documents; tokenizer: returned
    by :meth:`tokenizer`; manifest: a dict identifying the corpus (its fingerprint); name: for repr.
    """

    def __init__(self, documents: Mapping[str, Mapping[str, Sequence[Any]]], *,
                 kinds: Mapping[str, str] | None = None, bytes_per_token: float | Mapping[str, float] = 1.0,
                 splits: Sequence[str] = STREAM_SPLITS, streams: bool = False, any_split: bool = False,
                 keys: Mapping[str, Sequence[str]] | None = None, texts: Mapping[str, Sequence[str]] | None = None,
                 tokenizer: Any = None, manifest: dict[str, Any] | None = None, name: str | None = None,
                 dtype: Any = np.int64):
        self._docs = {lab: {sp: [np.asarray(d, dtype=dtype) for d in docs] for sp, docs in by_split.items()}
                      for lab, by_split in documents.items()}
        self.labels = list(self._docs)
        self.splits = tuple(splits)
        self._kinds = dict(kinds or {})
        self._bpt = bytes_per_token
        self._streams, self._any_split = streams, any_split
        self.keys = {lab: list(keys[lab]) for lab in keys} if keys else {}
        self._texts = {lab: list(texts[lab]) for lab in texts} if texts else {}
        self._tokenizer = tokenizer
        self.manifest = manifest
        self.name = name

    @classmethod
    def from_streams(cls, streams: Mapping[str, Mapping[str, Any]], kinds: Mapping[str, str] | None = None,
                     bytes_per_token: float | Mapping[str, float] = 1.0,
                     splits: Sequence[str] = STREAM_SPLITS, **kwargs: Any) -> MemoryCorpus:
        """{label: {split: 1-D token stream}}: each non-empty stream is the split's one document."""
        docs = {lab: {sp: [arr] for sp, arr in by_split.items() if len(np.asarray(arr))}
                for lab, by_split in streams.items()}
        return cls(docs, kinds=kinds, bytes_per_token=bytes_per_token, splits=splits, streams=True, **kwargs)

    @classmethod
    def from_documents(cls, documents: Mapping[str, Sequence[Any]], kinds: Mapping[str, str] | None = None,
                       split: str = ALL_SPLIT, **kwargs: Any) -> MemoryCorpus:
        """{label: [document token arrays]} as one split (read by any split name), labels in
        the mapping's order."""
        return cls({lab: {split: list(docs)} for lab, docs in documents.items()}, kinds=kinds, splits=(split,),
                   any_split=True, **kwargs)

    # metadata --------------------------------------------------------------------------------
    def label_kind(self, label: str) -> str:
        return self._kinds.get(label, "natural")

    def labels_of_kind(self, kind: str) -> list[str]:
        return [lab for lab in self.labels if self.label_kind(lab) == kind]

    def tokenizer(self) -> Any:
        return self._tokenizer

    def stats(self, label: str, split: str) -> dict[str, int]:
        """docs / tokens / bytes of a split (bytes = tokens * bytes_per_token, rounded)."""
        docs = self.documents(label, split)
        n = int(sum(len(d) for d in docs))
        bpt = self._bpt[label] if isinstance(self._bpt, Mapping) else self._bpt
        return {"docs": 0 if self._streams else len(docs), "tokens": n, "bytes": int(round(n * float(bpt)))}

    # data ------------------------------------------------------------------------------------
    def _split_docs(self, label: str, split: str) -> list[np.ndarray]:
        if label not in self._docs:
            raise KeyError(f"label {label!r} is not in this corpus; labels: {', '.join(self.labels)}")
        by_split = self._docs[label]
        if split in by_split:
            return by_split[split]
        if self._any_split and by_split:
            return next(iter(by_split.values()))
        return []

    def documents(self, label: str, split: str = "train") -> list[Integer[np.ndarray, "_doc_len"]]:
        """Token arrays of each document of a split (a stream corpus: the stream, if not empty)."""
        return list(self._split_docs(label, split))

    def tokens(self, label: str, split: str = "train") -> Integer[np.ndarray, "n_tokens"]:
        """All tokens of a split, documents concatenated (empty for a missing split)."""
        docs = self._split_docs(label, split)
        if len(docs) == 1:
            return docs[0]
        return np.concatenate(docs) if docs else np.zeros(0, dtype=np.int64)

    def texts(self, label: str, split: str = "train", limit: int | None = None) -> list[str]:
        """The documents' texts, when the corpus was built from texts."""
        if label not in self._texts:
            raise KeyError(f"no texts for label {label!r}: this corpus was built from token ids")
        return self._texts[label][:limit]

    def __repr__(self) -> str:
        return f"MemoryCorpus({self.name or ''} labels={self.labels})"


def text_corpus(model: Any, texts: Mapping[str, Sequence[str]], keys: Mapping[str, Sequence[str]] | None = None,
                name: str | None = None) -> MemoryCorpus:
    """``{label: [text, ...]}`` tokenised with the model's tokenizer as [bos, ..., eos] documents
    (labels sorted, one split "all")."""
    if getattr(model, "tokenizer", None) is None:
        raise CorpusSpecError("the model has no tokenizer: build a MemoryCorpus from token ids instead")
    cfg = model.cfg
    head = [cfg.bos_token_id] if cfg.bos_token_id is not None else []
    tail = [cfg.eos_token_id] if cfg.eos_token_id is not None else []
    labels = sorted(texts)
    docs = {lab: [np.asarray(head + model.tokenizer.encode(t) + tail, dtype=np.int64) for t in texts[lab]]
            for lab in labels}
    return MemoryCorpus.from_documents(docs, keys=keys, texts={lab: list(texts[lab]) for lab in labels}, name=name)


def text_folder_corpus(model: Any, path: str | os.PathLike[str]) -> MemoryCorpus:
    """A plain-text corpus folder: ``path/<label>/*.txt``, one document per file (sorted by name)."""
    root = Path(path)
    labels = sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.txt")))
    files = {lab: sorted((root / lab).glob("*.txt")) for lab in labels}
    texts = {lab: [f.read_text(encoding="utf-8", errors="replace") for f in files[lab]] for lab in labels}
    return text_corpus(model, texts, keys={lab: [f.name for f in files[lab]] for lab in labels}, name=str(root))


def is_text_folder(root: Path) -> bool:
    """Whether ``root`` holds ``<label>/*.txt`` folders."""
    return any(p.is_dir() and any(p.glob("*.txt")) for p in root.iterdir())


__all__ = ["CorpusSpecError", "MemoryCorpus", "is_text_folder", "text_corpus", "text_folder_corpus"]
