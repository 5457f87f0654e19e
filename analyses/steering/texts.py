"""Text of the corpus for a steering run: windows, chunks, labels, and the concept classifier."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from monet_interp.analyses.steering.config import DEFAULT_CONCEPTS, SteeringConfig
from monet_interp.analyses.steering.metrics import NgramNaiveBayes


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


def labels_of(corpus: Any, concepts: Sequence[str] | None, cfg: SteeringConfig) -> tuple[list[str], dict[str, list[str]]]:
    """(concepts, {concept: labels its prompts come from}): by default the other concepts of the
    same kind (code / natural text), or ``cfg.prompt_labels``."""
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


def classify(clf: NgramNaiveBayes, texts: Sequence[str], min_alnum: int) -> list[str]:
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


def statistics_windows(train_texts: Callable[[str], Sequence[str]], labels: Sequence[str], cfg: SteeringConfig,
                       encode: Callable[[str], list[int]]) -> dict[str, Any]:
    """{label: int64 [stat_windows, stat_tokens]} windows of each label's train text (``train_texts``)
    for the label statistics; label k draws its starts with seed ``cfg.seed + 17 k``. A label
    without one window of ``cfg.stat_tokens`` tokens is an error."""
    import torch

    windows = {}
    for k, label in enumerate(labels):
        ws = text_windows(train_texts(label), cfg.stat_windows, cfg.stat_tokens, encode, cfg.seed + 17 * k)
        if not ws:
            raise ValueError(f"label {label!r} has no train window of {cfg.stat_tokens} tokens")
        windows[label] = torch.tensor(ws, dtype=torch.long)
    return windows


__all__ = ["classify", "labels_of", "statistics_windows", "text_chunks", "text_windows", "train_classifier"]
