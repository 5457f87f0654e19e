"""Bits per byte of the training runs: per-label evaluation on sampled or evenly spread windows
(the formula and the per-token byte lengths are in :mod:`monet_interp.evaluation`).

bits per byte of a text = (sum over predicted tokens of -log2 p(token)) / (UTF-8 bytes of those
tokens). Byte lengths come from the tokenizer itself (exact for byte-level BPE: every token is a
fixed byte string; special tokens such as bos/eos count 0 bytes but their loss is kept), so the
figure does not depend on how a window cuts a document. Without a tokenizer the denominator is
the token count (the figure is then bits per token, and the result says so).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Int

from monet_interp.evaluation import bits_per_byte


@torch.no_grad()
def nll_and_bytes(model: Any, batch: Int[torch.Tensor, "batch window"],
                  byte_lengths: Int[torch.Tensor, " vocab"] | None) -> tuple[float, float, int]:
    """(sum of next-token NLL in nats, sum of target bytes, number of targets) for one batch."""
    batch = batch.to(model.device)
    nll = model(batch, return_type="loss", loss_per_token=True).float()
    targets = batch[:, 1:]
    n_bytes = float(targets.numel()) if byte_lengths is None else float(byte_lengths.to(targets.device)[targets].sum())
    return float(nll.sum()), n_bytes, targets.numel()


def _summarise(nll: float, n_bytes: float, n_tokens: int) -> dict[str, float]:
    return {"bpb": bits_per_byte(nll, n_bytes), "loss": nll / max(n_tokens, 1), "tokens": float(n_tokens),
            "bytes": n_bytes}


@torch.no_grad()
def evaluate_sampled(model: Any, corpus: Any, split: str, labels: Sequence[str], batches: int, batch_size: int,
                     seq_len: int, seed: int, byte_lengths: Int[torch.Tensor, " vocab"] | None) -> dict[str, dict]:
    """Per-label bpb on ``batches`` windows-batches drawn with ``corpus.sample_batch`` (fixed seed per label:
    every call sees the same windows). The caller sets eval mode / routing statistics."""
    out = {}
    for index, label in enumerate(labels):
        generator = torch.Generator().manual_seed(seed * 7919 + index)
        totals = [0.0, 0.0, 0]
        for _ in range(batches):
            batch = corpus.sample_batch(split, batch_size, seq_len, generator, labels=[label])
            nll, n_bytes, n_tokens = nll_and_bytes(model, batch, byte_lengths)
            totals = [totals[0] + nll, totals[1] + n_bytes, totals[2] + n_tokens]
        out[label] = _summarise(*totals)
    return out


@torch.no_grad()
def spread_windows(tokens: np.ndarray, max_windows: int, seq_len: int) -> np.ndarray | None:
    """Up to ``max_windows`` non-overlapping windows [n, seq_len + 1] (int64) spread evenly over a
    token stream (deterministic), or None when the stream is shorter than one window."""
    n_windows = (tokens.shape[0] - 1) // seq_len
    if n_windows < 1:
        return None
    picks = np.unique(np.linspace(0, n_windows - 1, num=min(max_windows, n_windows)).round().astype(np.int64))
    return np.stack([tokens[s * seq_len: s * seq_len + seq_len + 1] for s in picks]).astype(np.int64)


def evaluate_windows(model: Any, corpus: Any, split: str, labels: Sequence[str], max_windows: int, seq_len: int,
                     batch_size: int, byte_lengths: Int[torch.Tensor, " vocab"] | None) -> dict[str, dict]:
    """Per-label bpb on up to ``max_windows`` non-overlapping windows of ``seq_len + 1`` tokens spread
    evenly over each label's whole ``split`` token stream (deterministic; no window is counted twice)."""
    out = {}
    for label in labels:
        rows = spread_windows(np.asarray(corpus.tokens(label, split)), max_windows, seq_len)
        if rows is None:
            continue
        totals = [0.0, 0.0, 0]
        for start in range(0, rows.shape[0], batch_size):
            batch = torch.from_numpy(rows[start:start + batch_size])
            nll, n_bytes, n_tokens = nll_and_bytes(model, batch, byte_lengths)
            totals = [totals[0] + nll, totals[1] + n_bytes, totals[2] + n_tokens]
        out[label] = _summarise(*totals)
    return out


def mean_bpb(results: dict[str, dict]) -> float:
    """Unweighted mean over labels (every label counts the same)."""
    return float(np.mean([r["bpb"] for r in results.values()])) if results else float("nan")
