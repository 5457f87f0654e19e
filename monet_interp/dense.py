"""A dense Llama baseline with the same attention and norms as HookedMONET, for comparisons.

Design: pre-norm Llama blocks (``monet_interp.components`` Attention with RoPE, RMSNorm), tied
embeddings optional, and a **relu2 MLP** ``down(relu(up(x))^2)`` (no gate, no biases). relu2 is
MONET's own expert activation, so the baseline differs from MONET only in routing/experts, and its
neurons are directly comparable to MONET's expert units. ``matched_dense_config`` picks the MLP
width that makes the parameter count equal to a given MONET config's.

Hooks (TransformerLens names): ``hook_embed``, ``blocks.{l}.hook_resid_pre/mid/post``,
``blocks.{l}.hook_attn_out``, ``blocks.{l}.attn.*`` (as in HookedMONET),
``blocks.{l}.mlp.hook_pre`` [batch, pos, d_mlp] (before relu2), ``blocks.{l}.mlp.hook_post``
[batch, pos, d_mlp] (the neurons) and ``blocks.{l}.hook_mlp_out`` [batch, pos, d_model].

Checkpoints use the same HF-like folder format as MONET (config.json with
``model_type: "dense-llama"``, model.safetensors with Llama key names, tokenizer.json):
``HookedDense.save_pretrained(folder)`` / ``HookedDense.from_pretrained(folder)``;
``monet_interp.load_model(name_or_path)`` picks HookedMONET or HookedDense by ``model_type``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from jaxtyping import Bool, Float, Int
from torch import nn

from monet_interp import loading
from monet_interp.components import Attention, KeyValueCache, RMSNorm, relu2
from monet_interp.components.hooks import hook_point
from monet_interp.config import ModelConfig, MonetConfig
from monet_interp.hooked_lm import HookedCausalLM
from monet_interp.tokenizer import MonetTokenizer

MODEL_TYPE = "dense-llama"


@dataclass
class DenseConfig(ModelConfig):
    MODEL_TYPE: ClassVar[str] = MODEL_TYPE
    ARCHITECTURE: ClassVar[str] = "DenseLlamaForCausalLM"
    ACTIVATION_HINT: ClassVar[str] = 'the dense baseline uses "relu2" (as MONET\'s experts)'
    POSITIVE_INT_FIELDS: ClassVar[tuple[str, ...]] = (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "max_position_embeddings")

    # ModelConfig's fields whose defaults differ, then the dense ones
    vocab_size: int = 4096
    hidden_size: int = 192
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    max_position_embeddings: int = 1024
    tie_word_embeddings: bool = True
    pad_token_id: int | None = 0
    intermediate_size: int = 768
    model_type: str = MODEL_TYPE

    # TransformerLens-style aliases beyond TransformerLensAliases
    @property
    def d_mlp(self) -> int:
        return self.intermediate_size

    @property
    def act_fn(self) -> str:
        return self.hidden_act

    def num_parameters(self) -> int:
        d, kv = self.hidden_size, self.num_key_value_heads * self.head_dim
        per_layer = 2 * d * d + 2 * d * kv + 2 * d + 2 * d * self.intermediate_size
        embeddings = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return self.num_hidden_layers * per_layer + embeddings + d


def matched_dense_config(cfg: MonetConfig, multiple_of: int = 16) -> DenseConfig:
    """The dense config with MONET's shape whose parameter count is closest to ``cfg.num_parameters()``
    (MLP width rounded to ``multiple_of``)."""
    shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(ModelConfig) if f.name not in ("extra", "device")}
    floats = {name: float(shared[name]) for name in ("rms_norm_eps", "rope_theta", "initializer_range")}
    base = DenseConfig(**{**shared, **floats}, intermediate_size=multiple_of)
    per_unit = 2 * cfg.hidden_size * cfg.num_hidden_layers
    width = (cfg.num_parameters() - base.num_parameters()) / per_unit + multiple_of
    width = max(multiple_of, int(round(width / multiple_of)) * multiple_of)
    return dataclasses.replace(base, intermediate_size=width)


# ---------------------------------------------------------------------------- modules
class DenseMLP(nn.Module):
    """down(relu(up(x))^2): the Llama MLP with MONET's relu2 activation instead of SwiGLU."""

    def __init__(self, d_model: int, d_mlp: int):
        super().__init__()
        self.up_proj = nn.Linear(d_model, d_mlp, bias=False)
        self.down_proj = nn.Linear(d_mlp, d_model, bias=False)
        self.hook_pre = hook_point()  # [batch, pos, d_mlp]
        self.hook_post = hook_point()  # [batch, pos, d_mlp] (neuron activations)

    def forward(self, x: Float[torch.Tensor, "batch pos d_model"]) -> Float[torch.Tensor, "batch pos d_model"]:
        return self.down_proj(self.hook_post(relu2(self.hook_pre(self.up_proj(x)))))


class DenseBlock(nn.Module):
    def __init__(self, cfg: DenseConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.ln1 = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.rope_theta,
                              1.0, cfg.attention_bias)
        self.ln2 = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = DenseMLP(cfg.hidden_size, cfg.intermediate_size)
        self.hook_resid_pre = hook_point()
        self.hook_attn_out = hook_point()
        self.hook_resid_mid = hook_point()
        self.hook_mlp_out = hook_point()
        self.hook_resid_post = hook_point()

    def forward(
        self,
        resid: Float[torch.Tensor, "batch pos d_model"],
        positions: Int[torch.Tensor, "batch pos"],
        key_mask: Bool[torch.Tensor, "batch key_pos"] | None = None,
        cache: KeyValueCache | None = None,
    ) -> Float[torch.Tensor, "batch pos d_model"]:
        resid = self.hook_resid_pre(resid)
        attn_out = self.hook_attn_out(self.attn(self.ln1(resid), positions, key_mask, cache, self.layer))
        resid = self.hook_resid_mid(resid + attn_out)
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(resid)))
        return self.hook_resid_post(resid + mlp_out)


# HF <-> hooked key names of a dense layer (see monet_interp.loading)
DENSE_LAYER_RENAMES: loading.LayerRenames = (
    ("input_layernorm.", "ln1."), ("post_attention_layernorm.", "ln2."), ("self_attn.", "attn."), ("mlp.", "mlp."))


class HookedDense(HookedCausalLM):
    """Hooked dense Llama (relu2 MLP). Same forward/tokenizer/generate/checkpoint interface as
    HookedMONET (both are HookedCausalLM), without routing: ``return_routing=True`` gives []."""

    config_class = DenseConfig
    layer_renames = DENSE_LAYER_RENAMES
    default_checkpoint = "dense-tiny"

    def __init__(self, cfg: DenseConfig, tokenizer: MonetTokenizer | None = None,
                 device: str | torch.device | None = None):
        super().__init__()
        self.build(cfg, tokenizer, DenseBlock, device)

    def _run_blocks(self, resid: torch.Tensor, positions: torch.Tensor, key_mask: torch.Tensor | None,
                    cache: KeyValueCache | None, stop_at_layer: int | None) -> tuple[torch.Tensor, list]:
        for block in self.blocks[:stop_at_layer]:
            resid = block(resid, positions, key_mask, cache)
        return resid, []


__all__ = ["DENSE_LAYER_RENAMES", "MODEL_TYPE", "DenseBlock", "DenseConfig", "DenseMLP", "HookedDense",
           "matched_dense_config"]
