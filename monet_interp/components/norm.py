"""RMSNorm (Llama): x / sqrt(mean(x^2) + eps) * weight, computed in float32."""

import torch
from jaxtyping import Float
from torch import nn

from monet_interp.components.hooks import hook_point


class RMSNorm(nn.Module):
    def __init__(self, d_model: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.hook_scale = hook_point()  # [batch, pos, 1]
        self.hook_normalized = hook_point()  # [batch, pos, d_model]

    def forward(self, x: Float[torch.Tensor, "batch pos d_model"]) -> Float[torch.Tensor, "batch pos d_model"]:
        dtype = x.dtype
        x = x.to(torch.promote_types(dtype, torch.float32))  # float32 at least, float64 stays
        scale = self.hook_scale(torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))
        normalized = self.hook_normalized(x * scale)
        return self.weight * normalized.to(dtype)
