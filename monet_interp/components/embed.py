"""Token embedding and unembedding (HF layout: both store [d_vocab, d_model] matrices)."""

import torch
from jaxtyping import Float, Int
from torch import nn


class Embed(nn.Module):
    def __init__(self, d_vocab: int, d_model: int):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(d_vocab, d_model))

    def forward(self, tokens: Int[torch.Tensor, "batch pos"]) -> Float[torch.Tensor, "batch pos d_model"]:
        return nn.functional.embedding(tokens, self.W_E)


class Unembed(nn.Module):
    """logits = x @ W_U + b_U. ``weight`` is the HF ``lm_head.weight`` [d_vocab, d_model]."""

    def __init__(self, d_vocab: int, d_model: int, tied_to: Embed | None = None):
        super().__init__()
        self._tied_to = [tied_to] if tied_to is not None else None  # list: not a submodule
        if tied_to is None:
            self.weight = nn.Parameter(torch.empty(d_vocab, d_model))
        self.register_buffer("b_U", torch.zeros(d_vocab), persistent=False)

    @property
    def matrix(self) -> torch.Tensor:
        return self._tied_to[0].W_E if self._tied_to is not None else self.weight

    @property
    def W_U(self) -> Float[torch.Tensor, "d_model d_vocab"]:
        return self.matrix.T

    def forward(self, x: Float[torch.Tensor, "batch pos d_model"]) -> Float[torch.Tensor, "batch pos d_vocab"]:
        return nn.functional.linear(x, self.matrix) + self.b_U.to(x.dtype)
