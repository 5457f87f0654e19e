"""Next-token evaluation on held-out text: windows of a label's token stream, bits per byte and
top-1 / top-10 accuracy, per label (the metrics of the unlearning analysis, the edit command, and
the training runs' bits per byte).

    from monet_interp.evaluation import EvalSet, evaluate_sets, token_windows, common_tokens
    sets = [EvalSet(lab, token_windows(corpus, lab, "test", 512, 64), common_tokens(corpus, lab, 50),
                    bytes_per_predicted_token(corpus, lab, "test")) for lab in corpus.labels]
    frame = evaluate_sets(model, sets, byte_lengths=token_byte_lengths(corpus.tokenizer()))

Bits per byte = summed next-token loss (nats) / ln 2 / UTF-8 bytes of the predicted tokens (exact
per-token byte lengths from the tokenizer, :func:`token_byte_lengths`; or, without one, the split's
bytes per predicted token from the corpus manifest). bos is never a target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int

LN2 = math.log(2.0)


class EvaluationError(ValueError):
    """Windows or tokens that do not fit the model or the corpus."""


# ============================================================================================
# the two formulas
# ============================================================================================


def bits_per_byte(nll_nats: Any, n_bytes: Any) -> Any:
    """Summed next-token loss in nats -> bits per byte of the predicted text (at least one byte in
    the denominator): a float for numbers, an array for arrays."""
    if np.ndim(nll_nats) == 0 and np.ndim(n_bytes) == 0:
        return nll_nats / LN2 / max(n_bytes, 1.0)
    return nll_nats / LN2 / np.maximum(n_bytes, 1.0)


def percent(correct: Any, total: Any) -> Any:
    """Accuracy in percent (``total`` already at least 1)."""
    return 100 * correct / total


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


# ============================================================================================
# windows of a corpus
# ============================================================================================


def bytes_per_predicted_token(corpus: Any, label: str, split: str) -> float:
    """Bytes of text per predicted token of a split: bytes / (tokens - docs) (every token except a
    document's bos is predicted; bos/eos carry no bytes)."""
    s = corpus.stats(label, split)
    predicted = s["tokens"] - s.get("docs", 0)
    if predicted <= 0 or s["bytes"] <= 0:
        raise EvaluationError(f"label {label!r} has no text in split {split!r}")
    return s["bytes"] / predicted


def token_windows(corpus: Any, label: str, split: str, n_tokens: int, seq_len: int) -> torch.Tensor:
    """[n, seq_len + 1] int64 windows of the label's token stream, n = ceil(n_tokens / seq_len),
    starts evenly spaced over the whole split (deterministic). Windows may cross documents."""
    stream = corpus.tokens(label, split)
    length = len(stream)
    if length < seq_len + 1:
        raise EvaluationError(f"label {label!r} has {length} tokens in split {split!r}, fewer than "
                              f"seq_len + 1 = {seq_len + 1}; lower seq_len")
    n = max(1, math.ceil(n_tokens / seq_len))
    starts = np.unique(np.linspace(0, length - seq_len - 1, n).round().astype(np.int64))
    out = np.stack([np.asarray(stream[s:s + seq_len + 1], dtype=np.int64) for s in starts])
    return torch.from_numpy(out)


def common_tokens(corpus: Any, label: str, k: int, split: str = "train", max_tokens: int = 2_000_000) -> torch.Tensor:
    """The k most frequent token ids of a label's split (its first ``max_tokens`` tokens)."""
    if k <= 0:
        return torch.zeros(0, dtype=torch.long)
    stream = np.asarray(corpus.tokens(label, split)[:max_tokens], dtype=np.int64)
    if stream.size == 0:
        return torch.zeros(0, dtype=torch.long)
    counts = np.bincount(stream)
    order = np.argsort(-counts, kind="stable")[:k]
    return torch.from_numpy(order[counts[order] > 0].astype(np.int64))



# ============================================================================================
# metrics
# ============================================================================================


@dataclass
class EvalSet:
    """Held-out windows of one label and what is needed to score them."""

    label: str
    windows: torch.Tensor  # int64 [n, seq + 1]
    common: torch.Tensor  # int64 [k] the label's most common training tokens (skipped in *_skip)
    bytes_per_token: float


def _forward_logits(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    return model(tokens, return_type="logits")


@torch.no_grad()
def evaluate_arrays(model: Any, sets: Sequence[EvalSet], *, batch_size: int = 16, bos_token_id: int | None = None,
                    vocab_size: int | None = None, byte_lengths: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """The metrics of :func:`evaluate_sets` as {column: float64 [n_sets]} arrays (no pandas)."""
    seq = {s.windows.shape[1] for s in sets}
    if len(seq) != 1:
        raise EvaluationError(f"all evaluation windows must have the same length, got {sorted(seq)}")
    vocab = int(vocab_size if vocab_size is not None else model.cfg.d_vocab)
    rows = torch.cat([s.windows for s in sets])
    if rows.numel() and int(rows.max()) >= vocab:
        raise EvaluationError(f"token id {int(rows.max())} is out of range for the model's vocabulary ({vocab}): "
                              f"the corpus was tokenised with a different tokenizer")
    owner = torch.cat([torch.full((len(s.windows),), k, dtype=torch.long) for k, s in enumerate(sets)])
    common = torch.zeros(len(sets), vocab, dtype=torch.bool)
    for k, s in enumerate(sets):
        if s.common.numel():
            common[k, s.common[s.common < vocab]] = True
    device = model.device if hasattr(model, "device") else torch.device("cpu")
    sums = torch.zeros(len(sets), 8, dtype=torch.float64)  # n, nll, c1, c10, n_skip, c1_skip, c10_skip, bytes
    if byte_lengths is not None and byte_lengths.numel() < vocab:
        raise EvaluationError(f"byte_lengths covers {byte_lengths.numel()} tokens, the vocabulary has {vocab}")
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size].to(device)
        who = owner[start:start + batch_size]
        logits = _forward_logits(model, batch[:, :-1]).float()
        target = batch[:, 1:]
        logp = torch.log_softmax(logits, dim=-1)
        nll = -logp.gather(-1, target[..., None]).squeeze(-1)
        top10 = logits.topk(min(10, logits.shape[-1]), dim=-1).indices
        c1 = top10[..., 0] == target
        c10 = (top10 == target[..., None]).any(-1)
        valid = torch.ones_like(target, dtype=torch.bool)
        if bos_token_id is not None:
            valid &= target != bos_token_id
        keep = valid & ~common[who][torch.arange(len(who))[:, None], target.cpu()].to(valid.device)
        n_bytes = (byte_lengths.to(target.device)[target] * valid).sum(1) if byte_lengths is not None else valid.sum(1)
        per_row = torch.stack([valid.sum(1), (nll * valid).sum(1), (c1 & valid).sum(1), (c10 & valid).sum(1),
                               keep.sum(1), (c1 & keep).sum(1), (c10 & keep).sum(1), n_bytes], dim=1).double().cpu()
        sums.index_add_(0, who, per_row)
    sums = sums.numpy()
    n = np.maximum(sums[:, 0], 1)
    n_skip = np.maximum(sums[:, 4], 1)
    loss = sums[:, 1] / n
    if byte_lengths is not None:
        bpb = bits_per_byte(sums[:, 1], sums[:, 7])
    else:
        bpb = loss / LN2 / np.array([s.bytes_per_token for s in sets], dtype=np.float64)
    return {"tokens": sums[:, 0], "loss": loss, "bpb": bpb, "top1": percent(sums[:, 2], n),
            "top10": percent(sums[:, 3], n), "top1_skip": percent(sums[:, 5], n_skip),
            "top10_skip": percent(sums[:, 6], n_skip), "tokens_skip": sums[:, 4]}


def evaluate_sets(model: Any, sets: Sequence[EvalSet], *, batch_size: int = 16, bos_token_id: int | None = None,
                  vocab_size: int | None = None, byte_lengths: torch.Tensor | None = None) -> pd.DataFrame:
    """Next-token metrics of ``model`` on each EvalSet (one row per set, index = label).

    Columns: tokens, loss (nats/token), bpb (bits per byte), top1, top10 (percent),
    top1_skip, top10_skip (percent, targets among the label's common tokens left out), tokens_skip.
    Bits per byte: with ``byte_lengths`` ([vocab] UTF-8 bytes of each token) the exact bytes of
    the predicted tokens; otherwise each set's ``bytes_per_token``. Runs every window of every set
    in batches of ``batch_size`` under no_grad.
    """
    columns = ["tokens", "loss", "bpb", "top1", "top10", "top1_skip", "top10_skip", "tokens_skip"]
    if not sets:
        return pd.DataFrame(columns=columns)
    arrays = evaluate_arrays(model, sets, batch_size=batch_size, bos_token_id=bos_token_id, vocab_size=vocab_size,
                             byte_lengths=byte_lengths)
    frame = pd.DataFrame({c: arrays[c] for c in columns}, index=pd.Index([s.label for s in sets], name="label"))
    return frame.astype({"tokens": "int64", "tokens_skip": "int64"})



__all__ = ["EvalSet", "EvaluationError", "LN2", "bits_per_byte", "bytes_per_predicted_token", "common_tokens",
           "evaluate_arrays", "evaluate_sets", "percent", "token_byte_lengths", "token_windows"]
