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
``HookedDense.save_pretrained(folder)`` / ``HookedDense.from_pretrained(folder)``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import nn
from transformer_lens import ActivationCache, HookedRootModule

from monet_interp import loading
from monet_interp.components import Attention, Embed, KeyValueCache, RMSNorm, Unembed, relu2
from monet_interp.components.hooks import hook_point
from monet_interp.config import ConfigError, MonetConfig
from monet_interp.model import HookedMONET
from monet_interp.tokenizer import MonetTokenizer

MODEL_TYPE = "dense-llama"


@dataclass
class DenseConfig:
    vocab_size: int = 4096
    hidden_size: int = 192
    intermediate_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    hidden_act: str = "relu2"
    max_position_embeddings: int = 1024
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    attention_bias: bool = False
    tie_word_embeddings: bool = True
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = 0
    initializer_range: float = 0.02
    model_type: str = MODEL_TYPE
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    device: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        self.validate()

    # TransformerLens-style aliases
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def n_layers(self) -> int:
        return self.num_hidden_layers

    @property
    def d_model(self) -> int:
        return self.hidden_size

    @property
    def d_mlp(self) -> int:
        return self.intermediate_size

    @property
    def n_heads(self) -> int:
        return self.num_attention_heads

    @property
    def d_head(self) -> int:
        return self.head_dim

    @property
    def d_vocab(self) -> int:
        return self.vocab_size

    @property
    def n_ctx(self) -> int:
        return self.max_position_embeddings

    @property
    def act_fn(self) -> str:
        return self.hidden_act

    def num_parameters(self) -> int:
        d, kv = self.hidden_size, self.num_key_value_heads * self.head_dim
        per_layer = 2 * d * d + 2 * d * kv + 2 * d + 2 * d * self.intermediate_size
        embeddings = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return self.num_hidden_layers * per_layer + embeddings + d

    def validate(self) -> None:
        def fail(name: str, why: str) -> None:
            raise ConfigError(f"DenseConfig.{name}={getattr(self, name)!r}: {why}")

        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                fail(name, "must be a positive integer")
        if self.model_type != MODEL_TYPE:
            fail("model_type", f"must be {MODEL_TYPE!r}")
        if self.hidden_act != "relu2":
            fail("hidden_act", 'the dense baseline uses "relu2" (as MONET\'s experts)')
        if self.hidden_size % self.num_attention_heads:
            fail("num_attention_heads", f"must divide hidden_size={self.hidden_size}")
        if self.num_attention_heads % self.num_key_value_heads:
            fail("num_key_value_heads", f"must divide num_attention_heads={self.num_attention_heads}")
        if self.head_dim % 2:
            fail("hidden_size", "hidden_size / num_attention_heads must be even for rotary embeddings")

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("extra", "device")}
        out["architectures"] = ["DenseLlamaForCausalLM"]
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DenseConfig:
        if data.get("model_type") != MODEL_TYPE:
            raise ConfigError(f"config.json has model_type={data.get('model_type')!r}; expected {MODEL_TYPE!r}")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "device"}
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known and k != "architectures"}
        return cls(**kwargs, extra=extra)

    def to_json_file(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_json_file(cls, path: str | Path) -> DenseConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def matched_dense_config(cfg: MonetConfig, multiple_of: int = 16) -> DenseConfig:
    """The dense config with MONET's shape whose parameter count is closest to ``cfg.num_parameters()``
    (MLP width rounded to ``multiple_of``)."""
    base = DenseConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=multiple_of,
                       num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
                       num_key_value_heads=cfg.num_key_value_heads,
                       max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=float(cfg.rms_norm_eps),
                       rope_theta=float(cfg.rope_theta), tie_word_embeddings=cfg.tie_word_embeddings,
                       bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id,
                       initializer_range=float(cfg.initializer_range))
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


# HF <-> hooked key names
_LAYER_RENAMES = (("input_layernorm.", "ln1."), ("post_attention_layernorm.", "ln2."), ("self_attn.", "attn."),
                  ("mlp.", "mlp."))


def dense_hf_to_hooked_key(key: str) -> str:
    fixed = {"model.embed_tokens.weight": "embed.W_E", "lm_head.weight": "unembed.weight",
             "model.norm.weight": "ln_final.weight"}
    if key in fixed:
        return fixed[key]
    match = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", key)
    if match:
        layer, rest = match.groups()
        for old, new in _LAYER_RENAMES:
            if rest.startswith(old):
                return f"blocks.{layer}.{new}{rest[len(old):]}"
    raise KeyError(key)


def dense_hooked_to_hf_key(key: str) -> str:
    fixed = {"embed.W_E": "model.embed_tokens.weight", "unembed.weight": "lm_head.weight",
             "ln_final.weight": "model.norm.weight"}
    if key in fixed:
        return fixed[key]
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
    if match:
        layer, rest = match.groups()
        for old, new in _LAYER_RENAMES:
            if rest.startswith(new):
                return f"model.layers.{layer}.{old}{rest[len(new):]}"
    raise KeyError(key)


class HookedDense(HookedRootModule):
    """Hooked dense Llama (relu2 MLP). Same forward/tokenizer/generate interface as HookedMONET,
    without routing."""

    # Tokenizer helpers, loss and generation are shared with HookedMONET (they only use cfg,
    # tokenizer, device and forward).
    _require_tokenizer = HookedMONET._require_tokenizer
    to_tokens = HookedMONET.to_tokens
    to_string = HookedMONET.to_string
    to_str_tokens = HookedMONET.to_str_tokens
    to_single_token = HookedMONET.to_single_token
    _as_tokens = HookedMONET._as_tokens
    _check_tokens = HookedMONET._check_tokens
    loss_fn = staticmethod(HookedMONET.loss_fn)
    generate = HookedMONET.generate

    def __init__(self, cfg: DenseConfig, tokenizer: MonetTokenizer | None = None,
                 device: str | torch.device | None = None):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.embed = Embed(cfg.vocab_size, cfg.hidden_size)
        self.hook_embed = hook_point()
        self.blocks = nn.ModuleList([DenseBlock(cfg, layer) for layer in range(cfg.num_hidden_layers)])
        self.ln_final = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.unembed = Unembed(cfg.vocab_size, cfg.hidden_size, tied_to=self.embed if cfg.tie_word_embeddings else None)
        self.init_weights()
        self.eval()
        self.setup()
        self.to(device or "cpu")

    @property
    def W_E(self) -> torch.Tensor:
        return self.embed.W_E

    @property
    def W_U(self) -> torch.Tensor:
        return self.unembed.W_U

    @property
    def device(self) -> torch.device:
        return self.embed.W_E.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.W_E.dtype

    def to(self, *args, **kwargs):
        out = super().to(*args, **kwargs)
        self.cfg.device = str(self.device)
        return out

    def init_weights(self, seed: int | None = None) -> None:
        """Same init as HookedMONET: normal(0, initializer_range) matrices, ones for norm weights."""
        HookedMONET.init_weights(self, seed)

    def set_router_batch_stats(self, enabled: bool) -> None:
        """No routers: a no-op, so trainers can treat both model kinds alike."""

    def forward(
        self,
        inputs,
        return_type: Literal["logits", "loss", "both"] | None = "logits",
        loss_per_token: bool = False,
        prepend_bos: bool | None = None,
        stop_at_layer: int | None = None,
        attention_mask: torch.Tensor | None = None,
        past_kv_cache: KeyValueCache | None = None,
        return_routing: bool = False,
    ):
        """As HookedMONET.forward; ``return_routing=True`` returns (result, []) (no routers)."""
        tokens = self._as_tokens(inputs, prepend_bos)
        past = past_kv_cache.length if past_kv_cache is not None else 0
        self._check_tokens(tokens, past)
        key_mask = None
        if past_kv_cache is not None and attention_mask is not None:
            previous = past_kv_cache.attention_mask
            if previous is None:
                previous = torch.ones(tokens.shape[0], past, dtype=torch.bool, device=tokens.device)
            past_kv_cache.attention_mask = torch.cat([previous, attention_mask.bool()], dim=1)
            attention_mask = past_kv_cache.attention_mask
        elif past_kv_cache is not None and past_kv_cache.attention_mask is not None:
            ones = torch.ones(tokens.shape, dtype=torch.bool, device=tokens.device)
            past_kv_cache.attention_mask = torch.cat([past_kv_cache.attention_mask, ones], dim=1)
            attention_mask = past_kv_cache.attention_mask
        if attention_mask is not None:
            key_mask = attention_mask.bool().to(tokens.device)
            positions = (key_mask.long().cumsum(-1) - 1).clamp_min(0)[:, -tokens.shape[1]:]
        else:
            positions = torch.arange(past, past + tokens.shape[1], device=tokens.device).expand(tokens.shape[0], -1)
        resid = self.hook_embed(self.embed(tokens))
        for block in self.blocks[:stop_at_layer]:
            resid = block(resid, positions, key_mask, past_kv_cache)
        if stop_at_layer is not None:
            return (resid, []) if return_routing else resid
        logits = self.unembed(self.ln_final(resid))
        if return_type == "logits":
            result = logits
        elif return_type in ("loss", "both"):
            mask = attention_mask if attention_mask is not None and past_kv_cache is None else None
            loss = self.loss_fn(logits, tokens, mask, per_token=loss_per_token)
            result = loss if return_type == "loss" else (logits, loss)
        elif return_type is None:
            result = None
        else:
            raise ValueError(f"unknown return_type {return_type!r}; use 'logits', 'loss', 'both' or None")
        return (result, []) if return_routing else result

    def run_with_cache(self, *model_args, return_cache_object: bool = True, remove_batch_dim: bool = False,
                       **kwargs):
        """(output, ActivationCache); names_filter, device, incl_bwd and forward arguments as usual."""
        out, cache_dict = super().run_with_cache(*model_args, remove_batch_dim=remove_batch_dim, **kwargs)
        if return_cache_object:
            return out, ActivationCache(cache_dict, self, has_batch_dim=not remove_batch_dim)
        return out, cache_dict

    # ------------------------------------------------------------------ checkpoints
    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        return {dense_hooked_to_hf_key(k): v.detach().contiguous().cpu() for k, v in self.state_dict().items()}

    def save_pretrained(self, folder: str | Path, save_tokenizer: bool = True) -> None:
        """config.json (model_type "dense-llama") + model.safetensors (Llama key names) [+ tokenizer.json]."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / (loading.SAFETENSORS_NAME + ".tmp")
        save_file(self.hf_state_dict(), str(tmp), metadata={"format": "pt"})
        tmp.replace(folder / loading.SAFETENSORS_NAME)
        self.cfg.to_json_file(folder / loading.CONFIG_NAME)
        if save_tokenizer and self.tokenizer is not None:
            self.tokenizer.save(folder)

    def load_hf_state_dict(self, hf_state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Copy HF-named tensors into this model (strict; every problem named at once)."""
        state, unknown = {}, []
        for key, value in hf_state.items():
            try:
                state[dense_hf_to_hooked_key(key)] = value
            except KeyError:
                unknown.append(key)
        expected = self.state_dict()
        missing = sorted(dense_hooked_to_hf_key(k) for k in expected if k not in state)
        unexpected = sorted(unknown + [dense_hooked_to_hf_key(k) for k in state if k not in expected])
        wrong = sorted(f"{dense_hooked_to_hf_key(k)}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                       for k, v in expected.items() if k in state and state[k].shape != v.shape)
        problems = [f"{what}: {', '.join(keys)}" for what, keys in
                    (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong)) if keys]
        if problems:
            raise loading.CheckpointError(f"checkpoint {source} does not match its config:\n  " + "\n  ".join(problems))
        with torch.no_grad():
            for key, param in expected.items():
                param.copy_(state[key].to(param.dtype))

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path = "dense-tiny", device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None) -> HookedDense:
        """Load an embedded checkpoint name (e.g. "dense-tiny") or a local folder."""
        folder = loading.resolve_checkpoint(name_or_path)
        if not (folder / loading.CONFIG_NAME).is_file():
            raise loading.CheckpointError(f"{folder} has no {loading.CONFIG_NAME}")
        cfg = DenseConfig.from_json_file(folder / loading.CONFIG_NAME)
        model = cls(cfg, MonetTokenizer.from_folder(folder))
        model.load_hf_state_dict(loading.read_state_dict(folder), str(folder))
        model.to(device or "cpu")
        if dtype is not None:
            model.to(dtype)
        model.checkpoint_path = str(folder)
        return model.eval()


def load_any_pretrained(name_or_path: str | Path, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None) -> HookedMONET | HookedDense:
    """HookedMONET or HookedDense, chosen by the ``model_type`` of the folder's config.json."""
    folder = loading.resolve_checkpoint(name_or_path)
    try:
        model_type = json.loads((folder / loading.CONFIG_NAME).read_text()).get("model_type", "monet")
    except (OSError, json.JSONDecodeError) as err:
        raise loading.CheckpointError(f"{folder} has no readable {loading.CONFIG_NAME} ({err})") from err
    if model_type == MODEL_TYPE:
        return HookedDense.from_pretrained(folder, device=device, dtype=dtype)
    return HookedMONET.from_pretrained(folder, device=device, dtype=dtype)
