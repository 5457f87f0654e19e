"""An independent, deliberately naive MONET forward pass for equivalence tests.

Works directly on a Hugging Face state dict (official key names) and a plain config dict, with
explicit per-expert sums sum_h sum_i sum_j g1[h,i] g2[h,j] E_ij(x) written from the formulas in
the MONET paper / released code. It shares no code with monet_interp. Float64 throughout.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch


def _rms(x, weight, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight


def _relu2(x):
    return torch.clamp(x, min=0) ** 2


def _rotate(vec, position, theta):
    """Rotary embedding of one head vector (pairs (k, k + half), HF Llama convention)."""
    half = vec.shape[0] // 2
    out = vec.clone()
    for k in range(half):
        angle = position * theta ** (-2 * k / vec.shape[0])
        c, s = math.cos(angle), math.sin(angle)
        out[k] = vec[k] * c - vec[k + half] * s
        out[k + half] = vec[k + half] * c + vec[k] * s
    return out


def _attention(h, sd, p, cfg):
    n_pos, d = h.shape
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = d // heads
    q = (h @ sd[p + "self_attn.q_proj.weight"].T).view(n_pos, heads, hd)
    k = (h @ sd[p + "self_attn.k_proj.weight"].T).view(n_pos, kv_heads, hd)
    v = (h @ sd[p + "self_attn.v_proj.weight"].T).view(n_pos, kv_heads, hd)
    theta = cfg.get("rope_theta", 10000.0)
    z = torch.zeros(n_pos, heads, hd, dtype=h.dtype)
    for head in range(heads):
        kv = head // (heads // kv_heads)
        for t in range(n_pos):
            qt = _rotate(q[t, head], t, theta)
            scores = torch.stack([qt @ _rotate(k[s, kv], s, theta) for s in range(t + 1)]) / math.sqrt(hd)
            weights = torch.softmax(scores, 0)
            z[t, head] = sum(weights[s] * v[s, kv] for s in range(t + 1))
    return z.reshape(n_pos, d) @ sd[p + "self_attn.o_proj.weight"].T


def _route(y, sd, p, cfg):
    heads, experts, topk = cfg["moe_heads"], cfg["moe_experts"], cfg["moe_topk"]
    sigma = NormalDist().inv_cdf(1 - topk / experts)
    factors = []
    for w, norm in (("w1", "norm1"), ("w2", "norm2")):
        logits = (y @ sd[p + f"router.{w}.weight"].T).view(y.shape[0], heads, experts)
        mean = sd[p + f"router.{norm}.running_mean"].double()
        var = sd[p + f"router.{norm}.running_var"].double()
        g = torch.zeros_like(logits)
        for t in range(y.shape[0]):
            for h in range(heads):
                normed = (logits[t, h] - mean[h]) / torch.sqrt(var[h] + 1e-5)
                keep = normed >= min(normed.max().item(), sigma)
                kept = logits[t, h][keep]
                g[t, h][keep] = torch.exp(kept - kept.max()) / torch.exp(kept - kept.max()).sum()
        factors.append(g)
    return factors


def expert_output(y_t, sd, p, cfg, i, j):
    """E_ij(y_t) from the formulas of monet.md."""
    m, e = cfg["moe_dim"], cfg["moe_experts"]
    if cfg["moe_decompose"] == "horizontal":
        U = sd[p + "moe.u.weight"][i * m:(i + 1) * m]
        c = sd[p + "moe.u.bias"][i * m:(i + 1) * m]
        V = sd[p + "moe.v.weight"][:, j * m:(j + 1) * m]
        return V @ _relu2(U @ y_t + c) + sd[p + "moe.b"][j]
    half = m // 2
    a_i = _relu2(sd[p + "moe.u1.weight"][i * half:(i + 1) * half] @ y_t + sd[p + "moe.u1.bias"][i * half:(i + 1) * half])
    a_j = _relu2(sd[p + "moe.u2.weight"][j * half:(j + 1) * half] @ y_t + sd[p + "moe.u2.bias"][j * half:(j + 1) * half])
    top = (sd[p + "moe.v11.weight"][:, i * half:(i + 1) * half] @ a_i
           + sd[p + "moe.v12.weight"][:, i * half:(i + 1) * half] @ a_j + sd[p + "moe.b1"][i])
    bottom = (sd[p + "moe.v21.weight"][:, j * half:(j + 1) * half] @ a_i
              + sd[p + "moe.v22.weight"][:, j * half:(j + 1) * half] @ a_j + sd[p + "moe.b2"][j])
    return torch.cat([top, bottom])


def _moe(y, g1, g2, sd, p, cfg):
    out = torch.zeros_like(y)
    for t in range(y.shape[0]):
        for h in range(cfg["moe_heads"]):
            for i in torch.nonzero(g1[t, h]).flatten().tolist():
                for j in torch.nonzero(g2[t, h]).flatten().tolist():
                    out[t] += g1[t, h, i] * g2[t, h, j] * expert_output(y[t], sd, p, cfg, i, j)
    return out


def naive_logits(hf_state: dict, cfg: dict, tokens: torch.Tensor) -> torch.Tensor:
    """Logits [batch, pos, vocab] in float64 for token ids [batch, pos]."""
    sd = {k: v.double() for k, v in hf_state.items()}
    eps = cfg["rms_norm_eps"]
    outs = []
    for row in tokens:
        x = sd["model.embed_tokens.weight"][row]
        g1 = g2 = None
        for layer in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{layer}."
            x = x + _attention(_rms(x, sd[p + "input_layernorm.weight"], eps), sd, p, cfg)
            y = _rms(x, sd[p + "post_attention_layernorm.weight"], eps)
            if layer % cfg["moe_groups"] == 0:
                g1, g2 = _route(y, sd, p, cfg)
            x = x + _moe(y, g1, g2, sd, p, cfg)
        x = _rms(x, sd["model.norm.weight"], eps)
        head = sd["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else sd["lm_head.weight"]
        outs.append(x @ head.T)
    return torch.stack(outs)


def random_hf_state(cfg: dict, seed: int = 0, scale: float = 0.3) -> dict[str, torch.Tensor]:
    """A random state dict with official HF key names and shapes (monet.md), written by hand."""
    gen = torch.Generator().manual_seed(seed)
    d, V, L = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = d // heads
    m, E, H = cfg["moe_dim"], cfg["moe_experts"], cfg["moe_heads"]

    def rnd(*shape, s=scale):
        return torch.randn(*shape, generator=gen) * s

    sd = {"model.embed_tokens.weight": rnd(V, d, s=1.0), "model.norm.weight": 1 + rnd(d, s=0.1)}
    if not cfg.get("tie_word_embeddings"):
        sd["lm_head.weight"] = rnd(V, d)
    for layer in range(L):
        p = f"model.layers.{layer}."
        sd[p + "input_layernorm.weight"] = 1 + rnd(d, s=0.1)
        sd[p + "post_attention_layernorm.weight"] = 1 + rnd(d, s=0.1)
        sd[p + "self_attn.q_proj.weight"] = rnd(heads * hd, d)
        sd[p + "self_attn.k_proj.weight"] = rnd(kv * hd, d)
        sd[p + "self_attn.v_proj.weight"] = rnd(kv * hd, d)
        sd[p + "self_attn.o_proj.weight"] = rnd(d, heads * hd)
        if cfg["moe_decompose"] == "horizontal":
            sd[p + "moe.u.weight"] = rnd(E * m, d)
            sd[p + "moe.u.bias"] = rnd(E * m)
            sd[p + "moe.v.weight"] = rnd(d, E * m)
            sd[p + "moe.b"] = rnd(E, d)
        else:
            for name in ("u1", "u2"):
                sd[p + f"moe.{name}.weight"] = rnd(E * m // 2, d)
                sd[p + f"moe.{name}.bias"] = rnd(E * m // 2)
            for name in ("v11", "v12", "v21", "v22"):
                sd[p + f"moe.{name}.weight"] = rnd(d // 2, E * m // 2)
            sd[p + "moe.b1"] = rnd(E, d // 2)
            sd[p + "moe.b2"] = rnd(E, d // 2)
        if layer % cfg["moe_groups"] == 0:
            sd[p + "router.w1.weight"] = rnd(H * E, d, s=1.0)
            sd[p + "router.w2.weight"] = rnd(H * E, d, s=1.0)
            for norm in ("norm1", "norm2"):
                # Running statistics that keep several experts per head (like a trained router).
                sd[p + f"router.{norm}.running_mean"] = rnd(H, s=0.5)
                sd[p + f"router.{norm}.running_var"] = 1 + torch.rand(H, generator=gen) * 20
                sd[p + f"router.{norm}.num_batches_tracked"] = torch.tensor(100)
    return sd


def tiny_config_dict(**overrides) -> dict:
    cfg = dict(model_type="monet", architectures=["MonetForCausalLM"], vocab_size=64, hidden_size=32,
               num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, hidden_act="relu2",
               max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=10000.0, rope_scaling=None,
               attention_bias=False, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
               moe_dim=4, moe_heads=2, moe_experts=8, moe_topk=3, moe_groups=2, moe_decompose="vertical",
               initializer_range=0.02, use_cache=True, torch_dtype="float32")
    cfg.update(overrides)
    return cfg
