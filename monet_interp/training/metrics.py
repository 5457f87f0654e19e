"""Bits per byte: per-token byte lengths of a byte-level BPE vocabulary and per-label evaluation.

bits per byte of a text = (sum over predicted tokens of -log2 p(token)) / (UTF-8 bytes of those
tokens). Byte lengths come from the tokenizer itself (exact for byte-level BPE: every token is a
fixed byte string; special tokens such as bos/eos count 0 bytes but their loss is kept), so the
figure does not depend on how a window cuts a document. Without a tokenizer the denominator is
the token count (the figure is then bits per token, and the result says so).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Int


def _byte_level_alphabet() -> dict[str, int]:
    """Map each character of the byte-level BPE alphabet back to its byte.

    Bytes that print as themselves (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) keep their code
    point; the other 68 bytes are assigned code points 256, 257, ... in increasing byte order.
    """
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAC + 1)) | set(range(0xAE, 0xFF + 1))
    mapping, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[chr(byte)] = byte
        else:
            mapping[chr(256 + extra)] = byte
            extra += 1
    return mapping


def token_byte_lengths(tokenizer: Any, vocab_size: int | None = None) -> Int[torch.Tensor, " vocab"]:
    """UTF-8 byte length of every token id (0 for special tokens and ids the tokenizer lacks).

    ``tokenizer`` is a ``tokenizers.Tokenizer`` or a MonetTokenizer wrapping one."""
    backend = getattr(tokenizer, "_backend", tokenizer)
    size = vocab_size if vocab_size is not None else backend.get_vocab_size(with_added_tokens=True)
    special = {index for index, added in backend.get_added_tokens_decoder().items() if added.special}
    alphabet = _byte_level_alphabet()
    byte_level = type(backend.decoder).__name__ == "ByteLevel"
    lengths = torch.zeros(size, dtype=torch.long)
    for index in range(size):
        piece = backend.id_to_token(index)
        if piece is None or index in special:
            continue
        if byte_level and all(ch in alphabet for ch in piece):
            lengths[index] = len(piece)
        else:  # not byte-level: decode (exact for whole-character tokens)
            lengths[index] = len(backend.decode([index], skip_special_tokens=False).encode("utf-8"))
    return lengths


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
    return {"bpb": nll / math.log(2) / max(n_bytes, 1.0), "loss": nll / max(n_tokens, 1), "tokens": float(n_tokens),
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
def evaluate_windows(model: Any, corpus: Any, split: str, labels: Sequence[str], max_windows: int, seq_len: int,
                     batch_size: int, byte_lengths: Int[torch.Tensor, " vocab"] | None) -> dict[str, dict]:
    """Per-label bpb on up to ``max_windows`` non-overlapping windows of ``seq_len + 1`` tokens spread
    evenly over each label's whole ``split`` token stream (deterministic; no window is counted twice)."""
    out = {}
    for label in labels:
        tokens = np.asarray(corpus.tokens(label, split))
        n_windows = (tokens.shape[0] - 1) // seq_len
        if n_windows < 1:
            continue
        picks = np.unique(np.linspace(0, n_windows - 1, num=min(max_windows, n_windows)).round().astype(np.int64))
        rows = np.stack([tokens[s * seq_len: s * seq_len + seq_len + 1] for s in picks]).astype(np.int64)
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
