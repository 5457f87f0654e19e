"""A plain-torch reference of one MONET / dense training step: the speed yardstick of the trainer.

The same math as ``monet_interp.training`` (Llama attention with RoPE, RMSNorm, MONET's router
with BatchNorm-threshold or top-1 routing, the exact HD/VD expert mix, tied embeddings,
next-token cross-entropy + lambda (L_unif + L_amb), clipping, AdamW), written the shortest way
torch allows: no hook points, no runtime shape checks, no input validation, no editing hooks.
``benchmarks/bench_training.py`` times it side by side with the trainer's own step.
"""

from __future__ import annotations

from statistics import NormalDist

import torch
import torch.nn.functional as F
from torch import nn


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _relu2(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x).square()


def _causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + causal mask) v, written out (on CPU under bf16 autocast this beats
    torch's fused scaled_dot_product_attention, which runs its bf16 kernel; in float32 they tie)."""
    t = q.shape[-2]
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    causal = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    return scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v


class PlainAttention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads, self.d_head = heads, d // heads
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.d_head).permute(2, 0, 3, 1, 4)
        half = self.d_head // 2

        def rotate(y: torch.Tensor) -> torch.Tensor:
            return y * cos + torch.cat([-y[..., half:], y[..., :half]], -1) * sin

        z = _causal_attention(rotate(q), rotate(k), v)
        return self.out(z.transpose(1, 2).reshape(b, t, d))


class PlainRouter(nn.Module):
    def __init__(self, d: int, heads: int, experts: int, topk: int, rule: str):
        super().__init__()
        self.heads, self.experts, self.rule = heads, experts, rule
        self.w = nn.Linear(d, 2 * heads * experts, bias=False)
        self.register_buffer("mean", torch.zeros(2, heads))
        self.register_buffer("var", torch.ones(2, heads))
        self.sigma = NormalDist().inv_cdf(1.0 - topk / experts)

    def forward(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        logits = self.w(x).view(*x.shape[:-1], 2, self.heads, self.experts).unbind(-3)
        out = []
        for side, raw in enumerate(logits):
            if self.rule == "top1":
                probs = raw.softmax(-1)
                choice = raw.argmax(-1, keepdim=True)
                out.append((torch.zeros_like(probs).scatter(-1, choice, probs.gather(-1, choice)), probs))
                continue
            flat = raw.transpose(-1, -2).reshape(-1, self.heads)
            normed = F.batch_norm(flat, self.mean[side], self.var[side], training=True, momentum=0.1)
            normed = normed.view(*raw.shape[:-2], self.experts, self.heads).transpose(-1, -2)
            bar = normed.amax(-1, keepdim=True).clamp_max(self.sigma)
            g = raw.masked_fill(normed < bar, float("-inf")).softmax(-1)
            out.append((g, g))
        return out


class PlainMoE(nn.Module):
    def __init__(self, d: int, experts: int, m: int, vertical: bool):
        super().__init__()
        self.experts, self.m, self.vertical = experts, m, vertical
        if vertical:
            self.u1, self.u2 = nn.Linear(d, experts * m // 2), nn.Linear(d, experts * m // 2)
            self.v = nn.ModuleList(nn.Linear(experts * m // 2, d // 2, bias=False) for _ in range(4))
            self.b1, self.b2 = nn.Parameter(torch.zeros(experts, d // 2)), nn.Parameter(torch.zeros(experts, d // 2))
        else:
            self.u = nn.Linear(d, experts * m)
            self.v = nn.Linear(experts * m, d, bias=False)
            self.b = nn.Parameter(torch.zeros(experts, d))

    def forward(self, x: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
        if not self.vertical:
            a = _relu2(self.u(x)).unflatten(-1, (self.experts, self.m))
            z = torch.einsum("bthj,bthm->btjm", g2, torch.einsum("bthi,btim->bthm", g1, a))
            return self.v(z.flatten(-2)) + torch.einsum("bthj,bth->btj", g2, g1.sum(-1)) @ self.b
        a1 = _relu2(self.u1(x)).unflatten(-1, (self.experts, self.m // 2))
        a2 = _relu2(self.u2(x)).unflatten(-1, (self.experts, self.m // 2))
        r = torch.einsum("bthi,bth->bti", g1, g2.sum(-1))
        c = torch.einsum("bthj,bth->btj", g2, g1.sum(-1))
        z12 = torch.einsum("bthi,bthm->btim", g1, torch.einsum("bthj,btjm->bthm", g2, a2))
        z21 = torch.einsum("bthj,bthm->btjm", g2, torch.einsum("bthi,btim->bthm", g1, a1))
        v11, v12, v21, v22 = self.v
        top = v11((r[..., None] * a1).flatten(-2)) + v12(z12.flatten(-2)) + r @ self.b1
        bottom = v21(z21.flatten(-2)) + v22((c[..., None] * a2).flatten(-2)) + c @ self.b2
        return torch.cat([top, bottom], -1)


class PlainLM(nn.Module):
    """kind: vd | hd | top1 | dense; the embedded models' shape by default."""

    def __init__(self, kind: str, vocab: int = 4096, d: int = 192, layers: int = 4, heads: int = 4,
                 experts: int = 64, moe_heads: int = 4, m: int = 8, topk: int = 4, groups: int = 2,
                 d_mlp: int | None = None):
        super().__init__()
        self.kind, self.groups, self.d_head = kind, groups, d // heads
        self.embed = nn.Parameter(torch.randn(vocab, d) * 0.02)
        self.attn = nn.ModuleList(PlainAttention(d, heads) for _ in range(layers))
        self.norms = nn.Parameter(torch.ones(2 * layers + 1, d))
        if kind == "dense":
            width = d_mlp or 4 * d
            self.up = nn.ModuleList(nn.Linear(d, width, bias=False) for _ in range(layers))
            self.down = nn.ModuleList(nn.Linear(width, d, bias=False) for _ in range(layers))
        else:
            rule = "top1" if kind == "top1" else "threshold"
            self.routers = nn.ModuleList(PlainRouter(d, moe_heads, experts, topk, rule)
                                         for _ in range(0, layers, groups))
            self.moe = nn.ModuleList(PlainMoE(d, experts, m, kind != "hd") for _ in range(layers))

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, list]:
        # Like the trainer: the whole window runs (routing statistics include its last token);
        # the loss predicts tokens 1.. from positions ..-2.
        x = F.embedding(tokens, self.embed)
        t = tokens.shape[1]
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, self.d_head, 2, dtype=torch.float32) / self.d_head))
        angles = torch.arange(t, dtype=torch.float32)[:, None] * inv_freq
        angles = torch.cat([angles, angles], -1)
        cos, sin = angles.cos(), angles.sin()
        probs, routing = [], None
        for layer, attn in enumerate(self.attn):
            x = x + attn(_rms(x, self.norms[2 * layer]), cos, sin)
            y = _rms(x, self.norms[2 * layer + 1])
            if self.kind == "dense":
                x = x + self.down[layer](_relu2(self.up[layer](y)))
                continue
            if layer % self.groups == 0:
                routing = self.routers[layer // self.groups](y)
                probs.append(routing)
            (g1, _), (g2, _) = routing
            x = x + self.moe[layer](y, g1, g2)
        logits = F.linear(_rms(x, self.norms[-1]), self.embed)
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()), probs


def aux_losses(routers: list) -> torch.Tensor:
    """L_unif + L_amb averaged over routing groups (the paper's definitions)."""
    total = []
    for sides in routers:
        unif = sum(-torch.log(p.flatten(0, -3).mean(0) + 1e-9).mean() for _, p in sides) / 2
        amb = sum((1 - p.amax(-1)).mean() for _, p in sides) / 2
        total.append(unif + amb)
    return torch.stack(total).mean()


def make_reference_step(kind: str, aux_weight: float = 1e-3, lr: float = 3e-3, bf16: bool = False, **shape):
    """(model, step(batch) -> seconds): one plain training step, timed (``bf16``: CPU bf16 autocast)."""
    import time

    model = PlainLM(kind, **shape)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    params = list(model.parameters())

    def step(batch: torch.Tensor) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, routers = model(batch)
            if routers:
                loss = loss + aux_weight * aux_losses(routers)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    return model, step


__all__ = ["PlainLM", "aux_losses", "make_reference_step"]
