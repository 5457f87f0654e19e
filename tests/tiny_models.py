"""Tiny models and corpora shared by the statistics, units, monosemanticity, unlearning and
baseline tests (built deterministically, small enough for CPU test runs)."""

from __future__ import annotations

import functools

import numpy as np
import torch

from monet_interp import HookedMONET, MonetConfig
from monet_interp.data import MemoryCorpus
from monet_interp.dense import DenseConfig, HookedDense
from monet_interp.units import SAEBank

def cast_keeping_router_stats(model: HookedMONET, dtype: torch.dtype) -> HookedMONET:
    """``model.to(dtype)`` with the routers' BatchNorm running statistics kept float32 (the router
    normalises float32 logits with them), in place; returns the model."""
    model.to(dtype)
    for block in model.blocks:
        if block.moe.router is not None:
            for norm in (block.moe.router.norm1, block.moe.router.norm2):
                norm.running_mean.data = norm.running_mean.float()
                norm.running_var.data = norm.running_var.float()
    return model


# ============================================================================================
# stand-in corpus and models of the statistics tests (vocabulary 61, bos 1, eos 2)
# ============================================================================================

BOS, EOS, PLANT = 1, 2, 60


def stand_in_corpus(seed: int = 0, n_docs: int = 5, max_len: int = 70, plants: dict | None = None) -> MemoryCorpus:
    """Random [bos, ..., eos] documents of three labels (every split reads the same documents);
    ``plants`` {(label, doc, pos)} puts token PLANT there. The manifest identifies the corpus."""
    rng = np.random.default_rng(seed)
    labels = ["python", "english", "java"]
    docs = {}
    for lab in labels:
        docs[lab] = []
        for _ in range(n_docs):
            body = rng.integers(3, PLANT, int(rng.integers(3, max_len)))
            docs[lab].append(np.concatenate([[BOS], body, [EOS]]).astype(np.uint16))
    for (lab, doc, pos) in (plants or {}):
        docs[lab][doc][pos] = PLANT
    return MemoryCorpus.from_documents(docs, kinds={"python": "code", "english": "natural", "java": "code"},
                                       manifest={"stand_in": True, "seed": seed}, dtype=np.uint16)


STAND_IN_CFG = dict(vocab_size=61, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, moe_dim=4, moe_heads=2,
                    moe_experts=8, moe_topk=3, moe_groups=2, max_position_embeddings=64)


def make_model(seed: int = 0, **overrides) -> HookedMONET:
    """Tiny MONET with threshold routing that keeps several experts per head (router weights of
    std 1, BatchNorm running variances 5..20)."""
    torch.manual_seed(seed)
    model = HookedMONET(MonetConfig(**{**STAND_IN_CFG, **overrides}))
    model.init_weights(seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for block in model.blocks:
            router = block.moe.router
            if router is not None:
                for w in (router.w1.weight, router.w2.weight):
                    w.copy_(torch.randn(w.shape, generator=gen))
                for norm in (router.norm1, router.norm2):
                    norm.running_var.copy_(5 + 15 * torch.rand(norm.running_var.shape, generator=gen))
                    norm.running_mean.copy_(torch.randn(norm.running_mean.shape, generator=gen))
    return model.eval()


def stand_in_dense(seed: int) -> HookedDense:
    """Two-layer dense model (d_mlp 24) of the stand-in vocabulary."""
    dense = HookedDense(DenseConfig(vocab_size=61, hidden_size=32, intermediate_size=24, num_hidden_layers=2,
                                    num_attention_heads=4, max_position_embeddings=64))
    dense.init_weights(seed=seed)
    return dense


# ============================================================================================
# models and corpora of the unlearning / baseline / units tests (vocabulary 48)
# ============================================================================================


def tiny_cfg(decompose: str = "vertical", experts: int = 6, heads: int = 2, layers: int = 3) -> MonetConfig:
    return MonetConfig(vocab_size=48, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2, moe_dim=4,
                       moe_heads=heads, moe_experts=experts, moe_topk=2, moe_groups=2, moe_decompose=decompose,
                       max_position_embeddings=32, initializer_range=0.3, bos_token_id=1, eos_token_id=2)


@functools.lru_cache(maxsize=None)
def tiny_model(decompose: str = "vertical") -> HookedMONET:
    """3 layers in 2 routing groups (layers 0-1, 2), E=6, H=2, random MoE biases."""
    model = HookedMONET(tiny_cfg(decompose))
    model.init_weights(seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".moe." in name and name.endswith((".bias", ".b", ".b1", ".b2")):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    return model.eval()


def tiny_corpus(n_labels: int = 3, length: int = 400, vocab: int = 48, kind: str | None = None,
                bytes_per_token: float = 2.0) -> MemoryCorpus:
    """Labels whose tokens come from disjoint ranges (so they are easy to tell apart); kinds
    alternate code / natural unless ``kind`` gives every label one."""
    rng = np.random.default_rng(0)
    width = (vocab - 3) // n_labels
    streams = {}
    for k in range(n_labels):
        lo = 3 + k * width
        streams[f"lab{k}"] = {sp: rng.integers(lo, lo + width, size=length) for sp in ("train", "val", "test")}
    kinds = {f"lab{k}": kind or ("code" if k % 2 == 0 else "natural") for k in range(n_labels)}
    return MemoryCorpus.from_streams(streams, kinds=kinds, bytes_per_token=bytes_per_token)


@functools.lru_cache(maxsize=None)
def tiny_dense() -> HookedDense:
    cfg = DenseConfig(vocab_size=48, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                      max_position_embeddings=32, initializer_range=0.3, tie_word_embeddings=False)
    model = HookedDense(cfg)
    model.init_weights(seed=0)
    return model.eval()


class LinearTopKSAE(torch.nn.Module):
    """A hand-made SAE with SAELens' interface (encode, decode, W_dec, b_dec), for exactness tests."""

    def __init__(self, d: int, d_sae: int, k: int, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.W_enc = torch.randn(d, d_sae, generator=gen)
        self.b_enc = torch.randn(d_sae, generator=gen) * 0.1
        self.W_dec = torch.randn(d_sae, d, generator=gen) * 0.3
        self.b_dec = torch.randn(d, generator=gen) * 0.1
        self.k = k

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)
        top = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, top.values)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec + self.b_dec


def hand_bank(model: HookedDense, d_sae: int = 24, k: int = 4) -> SAEBank:
    saes = {layer: LinearTopKSAE(model.cfg.d_model, d_sae, k, seed=layer) for layer in range(model.cfg.n_layers)}
    mean_active = {layer: torch.rand(d_sae, generator=torch.Generator().manual_seed(9)) + 0.5 for layer in saes}
    return SAEBank(model, saes, mean_active)


def steering_cfg(decompose: str = "vertical", routing: str = "threshold", experts: int = 8, heads: int = 2,
                 **overrides) -> MonetConfig:
    """The 4-layer, 2-group MONET config of the steering tests (test_steering, test_router_steering)."""
    return MonetConfig(vocab_size=61, hidden_size=16, num_hidden_layers=4, num_attention_heads=2, moe_dim=4,
                       moe_heads=heads, moe_experts=experts, moe_topk=3, moe_groups=2, moe_decompose=decompose,
                       moe_routing=routing, max_position_embeddings=64, initializer_range=0.3, pad_token_id=0,
                       **overrides)
