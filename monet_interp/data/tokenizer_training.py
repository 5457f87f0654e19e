"""Byte-level BPE tokenizer for the embedded models: training, loading, document encoding.

Special tokens follow the Llama ordering: ``<|pad|>`` = 0, ``<|bos|>`` = 1, ``<|eos|>`` = 2. No
post-processor is attached, so ``tokenizer.encode(text)`` returns the plain tokens of ``text``;
:func:`encode_documents` adds ``bos``/``eos`` around each corpus document.

The committed tokenizer (``monet_interp/assets/tokenizer.json``) was trained with
``monet-interp corpus build --train-tokenizer --save-tokenizer monet_interp/assets/tokenizer.json``
on a label-balanced sample of the default corpus.
"""

import hashlib
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from jaxtyping import Integer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<|pad|>", "<|bos|>", "<|eos|>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
DEFAULT_VOCAB_SIZE = 4096
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
DEFAULT_TOKENIZER_PATH = Path(__file__).resolve().parent.parent / "assets" / "tokenizer.json"
DEFAULT_SAMPLE_BYTES = 16_000_000


def new_bpe_tokenizer() -> Tokenizer:
    """An untrained byte-level BPE tokenizer with this project's pre-tokenizer and decoder."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_bpe_tokenizer(texts: Iterable[str], *, vocab_size: int = DEFAULT_VOCAB_SIZE, min_frequency: int = 2,
                        progress: bool = False, length: int | None = None) -> Tokenizer:
    """Train a byte-level BPE on ``texts`` (deterministic for a given text sequence)."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be at least {MIN_VOCAB_SIZE} (256 bytes + 3 special tokens), got {vocab_size}")
    tok = new_bpe_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    check_special_tokens(tok)
    return tok


def check_special_tokens(tok: Tokenizer) -> None:
    """Raise ``ValueError`` unless pad/bos/eos have ids 0/1/2."""
    for name, want in zip(SPECIAL_TOKENS, (PAD_ID, BOS_ID, EOS_ID)):
        got = tok.token_to_id(name)
        if got != want:
            raise ValueError(f"tokenizer special token {name!r} has id {got}, expected {want}")


def balanced_sample(docs_by_label: Mapping[str, Sequence[str]], *, total_bytes: int = DEFAULT_SAMPLE_BYTES,
                    seed: int = 0) -> list[str]:
    """Up to ``total_bytes`` of text, split evenly across labels (left-over budget of small labels
    goes to the others), documents drawn in a seeded order; interleaved label by label."""
    labels = sorted(docs_by_label)
    if not labels:
        return []
    orders: dict[str, list[str]] = {}
    for lab in labels:
        docs = list(docs_by_label[lab])
        random.Random(f"tokenizer-sample:{seed}:{lab}").shuffle(docs)
        orders[lab] = docs
    sizes = {lab: [len(d.encode("utf-8")) for d in orders[lab]] for lab in labels}
    # water-filling: equal share per label, re-distributing what small labels cannot use
    budget = {lab: 0 for lab in labels}
    avail = {lab: sum(sizes[lab]) for lab in labels}
    remaining, active = total_bytes, [lab for lab in labels if avail[lab] > 0]
    while active and remaining > 0:
        share = remaining // len(active)
        if share == 0:
            break
        small = [lab for lab in active if avail[lab] - budget[lab] <= share]
        if not small:
            for lab in active:
                budget[lab] += share
                remaining -= share
            break
        for lab in small:
            remaining -= avail[lab] - budget[lab]
            budget[lab] = avail[lab]
        active = [lab for lab in active if lab not in small]
    picked: dict[str, list[str]] = {}
    for lab in labels:
        used, out = 0, []
        for d, n in zip(orders[lab], sizes[lab]):
            if used >= budget[lab]:
                break
            out.append(d)
            used += n
        picked[lab] = out
    result: list[str] = []
    for i in range(max((len(v) for v in picked.values()), default=0)):
        for lab in labels:
            if i < len(picked[lab]):
                result.append(picked[lab][i])
    return result


def tokenizer_json(tok: Tokenizer) -> str:
    return tok.to_str(pretty=False)


def tokenizer_sha256(tok: Tokenizer) -> str:
    """sha256 of the tokenizer's JSON serialisation (what ``save_tokenizer`` writes)."""
    return hashlib.sha256(tokenizer_json(tok).encode("utf-8")).hexdigest()


def save_tokenizer(tok: Tokenizer, path: str | os.PathLike[str]) -> str:
    """Write ``tokenizer.json`` atomically; returns its sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = tokenizer_json(tok).encode("utf-8")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


def load_tokenizer(path: str | os.PathLike[str] | None = None) -> Tokenizer:
    """Load a ``tokenizer.json`` (default: the committed asset) and check its special tokens."""
    p = Path(path) if path is not None else DEFAULT_TOKENIZER_PATH
    if not p.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {p}")
    tok = Tokenizer.from_file(str(p))
    check_special_tokens(tok)
    return tok


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.int32)


def encode_documents(tok: Tokenizer, texts: Sequence[str], *, batch_size: int = 256) -> list[Integer[np.ndarray, "_doc_len"]]:
    """Token ids of each text as ``[bos, ..., eos]`` (dtype by vocabulary size)."""
    dtype = token_dtype(tok.get_vocab_size())
    out: list[np.ndarray] = []
    fast = getattr(tok, "encode_batch_fast", None)
    for i in range(0, len(texts), batch_size):
        batch = list(texts[i:i + batch_size])
        encs = fast(batch, add_special_tokens=False) if fast is not None else tok.encode_batch(batch, add_special_tokens=False)
        for enc in encs:
            ids = np.empty(len(enc.ids) + 2, dtype=dtype)
            ids[0] = BOS_ID
            ids[1:-1] = enc.ids
            ids[-1] = EOS_ID
            out.append(ids)
    return out


__all__ = [
    "BOS_ID", "BOS_TOKEN", "DEFAULT_TOKENIZER_PATH", "DEFAULT_VOCAB_SIZE", "EOS_ID", "EOS_TOKEN", "PAD_ID",
    "PAD_TOKEN", "SPECIAL_TOKENS", "balanced_sample", "check_special_tokens", "encode_documents", "load_tokenizer",
    "new_bpe_tokenizer", "save_tokenizer", "token_dtype", "tokenizer_sha256", "train_bpe_tokenizer",
]
