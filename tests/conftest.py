"""Shared fixtures: tiny MONET configs, random released-format checkpoints, a toy tokenizer."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

# Triton kernels run in the interpreter on CPU-only machines; the variable must be set before
# triton.language is first imported (see monet_interp.kernels.dispatch.use_interpreter).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).parent))  # test helpers (naive_monet, ...) import by name

from naive_monet import random_hf_state, tiny_config_dict  # noqa: E402

# Tiny test tensors run faster on one thread than with thread hand-off on 2 shared cores.
torch.set_num_threads(1)


@pytest.fixture
def one_thread():
    """One torch thread for the test, restored after it (tiny tensors: intra-op threads only add
    synchronisation, badly so on a shared machine; some code under test sets its own count).
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_released_folder(folder: Path, cfg: dict, state: dict[str, torch.Tensor]) -> Path:
    """Write config.json + model.safetensors exactly as a released checkpoint stores them."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    return folder


def toy_tokenizer_json(path: Path) -> Path:
    """A character-level WordLevel tokenizer (ids 0..61): pad 0, bos 1, eos 2, then characters."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders

    chars = list("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.,():=")
    vocab = {"<|pad|>": 0, "<|bos|>": 1, "<|eos|>": 2}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|pad|>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(["<|pad|>", "<|bos|>", "<|eos|>"])
    tok.save(str(path))
    return path


@pytest.fixture
def released_folder(tmp_path):
    """Factory: a released-format checkpoint folder for config overrides, with a toy tokenizer."""

    def make(seed: int = 0, **overrides) -> tuple[Path, dict, dict]:
        cfg = tiny_config_dict(**overrides)
        state = random_hf_state(cfg, seed=seed)
        folder = write_released_folder(tmp_path / f"ckpt{seed}_{abs(hash(str(sorted(overrides.items()))))}", cfg, state)
        toy_tokenizer_json(folder / "tokenizer.json")
        return folder, cfg, state

    return make
