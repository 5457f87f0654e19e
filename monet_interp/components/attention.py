"""Llama self-attention: rotary position embeddings, grouped-query heads, no biases, KV cache."""

from __future__ import annotations

import math

import torch
from jaxtyping import Bool, Float, Int
from torch import nn

from monet_interp.components.hooks import hook_point


class KeyValueCache:
    """Keys (after rotation) and values of every layer, for incremental decoding."""

    def __init__(self, n_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers
        # [batch, cached_pos] 1 for real tokens, 0 for left padding; None means all real.
        self.attention_mask: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[1]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=1)
            v = torch.cat([self.values[layer], v], dim=1)
        self.keys[layer], self.values[layer] = k, v
        return k, v


def rotary_cos_sin(
    positions: Int[torch.Tensor, "batch pos"], head_dim: int, theta: float, scaling: float, dtype: torch.dtype
) -> tuple[Float[torch.Tensor, "batch pos head_dim"], Float[torch.Tensor, "batch pos head_dim"]]:
    compute = torch.promote_types(dtype, torch.float32)
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=compute) / head_dim))
    angles = (positions.to(compute) / scaling)[..., None] * inv_freq  # [batch, pos, head_dim/2]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(
    x: Float[torch.Tensor, "batch pos head head_dim"],
    cos: Float[torch.Tensor, "batch pos head_dim"],
    sin: Float[torch.Tensor, "batch pos head_dim"],
) -> Float[torch.Tensor, "batch pos head head_dim"]:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, rope_theta: float, rope_scaling: float = 1.0,
                 bias: bool = False):
        super().__init__()
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.d_head = d_model // n_heads
        self.rope_theta, self.rope_scaling = rope_theta, rope_scaling
        self.q_proj = nn.Linear(d_model, n_heads * self.d_head, bias=bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * self.d_head, bias=bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * self.d_head, bias=bias)
        self.o_proj = nn.Linear(n_heads * self.d_head, d_model, bias=bias)

        self.hook_q = hook_point()  # [batch, pos, head_index, d_head] (before rotation)
        self.hook_k = hook_point()  # [batch, pos, kv_head_index, d_head] (before rotation)
        self.hook_v = hook_point()  # [batch, pos, kv_head_index, d_head]
        self.hook_rot_q = hook_point()  # [batch, pos, head_index, d_head]
        self.hook_rot_k = hook_point()  # [batch, pos, kv_head_index, d_head]
        self.hook_attn_scores = hook_point(pos_dim=2)  # [batch, head_index, query_pos, key_pos] (masked)
        self.hook_pattern = hook_point(pos_dim=2)  # [batch, head_index, query_pos, key_pos]
        self.hook_z = hook_point()  # [batch, pos, head_index, d_head]

    def forward(
        self,
        x: Float[torch.Tensor, "batch pos d_model"],
        positions: Int[torch.Tensor, "batch pos"],
        key_mask: Bool[torch.Tensor, "batch key_pos"] | None = None,
        cache: KeyValueCache | None = None,
        layer: int = 0,
    ) -> Float[torch.Tensor, "batch pos d_model"]:
        batch, n_pos, _ = x.shape
        q = self.hook_q(self.q_proj(x).view(batch, n_pos, self.n_heads, self.d_head))
        k = self.hook_k(self.k_proj(x).view(batch, n_pos, self.n_kv_heads, self.d_head))
        v = self.hook_v(self.v_proj(x).view(batch, n_pos, self.n_kv_heads, self.d_head))
        cos, sin = rotary_cos_sin(positions, self.d_head, self.rope_theta, self.rope_scaling, x.dtype)
        q = self.hook_rot_q(apply_rotary(q, cos, sin))
        k = self.hook_rot_k(apply_rotary(k, cos, sin))
        past = 0
        if cache is not None:
            past = 0 if cache.keys[layer] is None else cache.keys[layer].shape[1]
            k, v = cache.append(layer, k, v)
        n_keys = k.shape[1]
        if self.n_kv_heads != self.n_heads:
            repeat = self.n_heads // self.n_kv_heads
            k = k.repeat_interleave(repeat, dim=2)
            v = v.repeat_interleave(repeat, dim=2)
        compute = torch.promote_types(x.dtype, torch.float32)  # float32 at least, float64 stays
        scores = torch.einsum("bqhd,bkhd->bhqk", q.to(compute), k.to(compute)) / math.sqrt(self.d_head)
        query_index = torch.arange(past, past + n_pos, device=x.device)[:, None]
        key_index = torch.arange(n_keys, device=x.device)[None, :]
        allowed = (key_index <= query_index)[None, None]  # [1, 1, q, k]
        if key_mask is not None:
            allowed = allowed & key_mask[:, None, None, :]
        scores = self.hook_attn_scores(scores.masked_fill(~allowed, float("-inf")))
        # A query whose every key is masked (left padding) attends to nothing instead of NaN.
        pattern = torch.softmax(scores, dim=-1).nan_to_num(0.0)
        pattern = self.hook_pattern(pattern)
        z = self.hook_z(torch.einsum("bhqk,bkhd->bqhd", pattern, v.to(compute)).to(x.dtype))
        return self.o_proj(z.reshape(batch, n_pos, self.n_heads * self.d_head))
