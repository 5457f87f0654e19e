"""Every hook point fires with its documented shape; routing hooks act on one layer; generation."""

from __future__ import annotations

import pytest
import torch

from monet_interp import HookedMONET
from monet_interp.components import KeyValueCache

B, P = 2, 6


def expected_shapes(cfg: dict, layer: int) -> dict[str, tuple]:
    d, heads, kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd, H, E, m = d // heads, cfg["moe_heads"], cfg["moe_experts"], cfg["moe_dim"]
    b = f"blocks.{layer}."
    shapes = {
        b + "hook_resid_pre": (B, P, d), b + "hook_attn_out": (B, P, d), b + "hook_resid_mid": (B, P, d),
        b + "hook_mlp_out": (B, P, d), b + "hook_resid_post": (B, P, d),
        b + "attn.hook_q": (B, P, heads, hd), b + "attn.hook_k": (B, P, kv, hd), b + "attn.hook_v": (B, P, kv, hd),
        b + "attn.hook_z": (B, P, heads, hd), b + "attn.hook_attn_scores": (B, heads, P, P),
        b + "attn.hook_pattern": (B, heads, P, P), b + "ln1.hook_normalized": (B, P, d),
        b + "ln2.hook_normalized": (B, P, d), b + "moe.hook_g_row": (B, P, H, E), b + "moe.hook_g_col": (B, P, H, E),
    }
    if layer % cfg["moe_groups"] == 0:
        shapes[b + "moe.hook_router_logits_row"] = (B, P, H, E)
        shapes[b + "moe.hook_router_logits_col"] = (B, P, H, E)
    if cfg["moe_decompose"] == "horizontal":
        shapes[b + "moe.hook_expert_acts"] = (B, P, E, m)
    else:
        shapes[b + "moe.hook_expert_acts_row"] = (B, P, E, m // 2)
        shapes[b + "moe.hook_expert_acts_col"] = (B, P, E, m // 2)
    return shapes


@pytest.mark.parametrize("decompose", ["vertical", "horizontal"])
def test_every_hook_fires_with_its_shape(released_folder, decompose):
    folder, cfg, _ = released_folder(moe_decompose=decompose, num_key_value_heads=2)
    model = HookedMONET.from_pretrained(folder)
    tokens = torch.randint(0, cfg["vocab_size"], (B, P))
    fired = {}
    hooks = [(name, lambda t, hook: fired.__setitem__(hook.name, tuple(t.shape))) for name in model.hook_dict]
    model.run_with_hooks(tokens, fwd_hooks=hooks)
    expected = {"hook_embed": (B, P, cfg["hidden_size"]), "ln_final.hook_normalized": (B, P, cfg["hidden_size"])}
    for layer in range(cfg["num_hidden_layers"]):
        expected.update(expected_shapes(cfg, layer))
    for name, shape in expected.items():
        assert fired.get(name) == shape, name
    # no router-logit hooks on layers that reuse a router
    assert "blocks.1.moe.hook_router_logits_row" not in model.hook_dict


def test_routing_factor_hook_changes_one_layer_only(released_folder):
    folder, cfg, _ = released_folder(num_hidden_layers=4, moe_groups=4)
    model = HookedMONET.from_pretrained(folder)
    tokens = torch.randint(0, cfg["vocab_size"], (B, P))
    _, clean = model.run_with_cache(tokens)

    def swap_factor(g, hook):
        return g.flip(-1)  # route every head to other experts

    with model.hooks(fwd_hooks=[("blocks.2.moe.hook_g_row", swap_factor)]):
        _, edited = model.run_with_cache(tokens)
    # layers 0, 1 untouched; layer 2's MoE output changed; layer 3 still uses the router's factors
    for name in ("blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out", "blocks.2.hook_resid_mid"):
        assert torch.equal(clean[name], edited[name]), name
    assert not torch.allclose(clean["blocks.2.hook_mlp_out"], edited["blocks.2.hook_mlp_out"])
    # layer 3's factors are the router's output of this run (same tokens -> same as layer 0's)
    assert torch.equal(edited["blocks.3.moe.hook_g_row"], edited["blocks.0.moe.hook_g_row"])
    assert torch.equal(edited["blocks.2.moe.hook_g_row"], clean["blocks.0.moe.hook_g_row"].flip(-1))


def test_run_with_cache_filters_and_slices_positions(released_folder):
    folder, cfg, _ = released_folder()
    model = HookedMONET.from_pretrained(folder)
    tokens = torch.randint(0, cfg["vocab_size"], (B, P))
    _, full = model.run_with_cache(tokens)
    _, sliced = model.run_with_cache(tokens, names_filter=lambda n: "hook_g_row" in n or "pattern" in n
                                     or n.endswith("attn.hook_q"), pos_slice=-1)
    assert set(sliced.keys()) == {k for k in full.keys() if "hook_g_row" in k or "pattern" in k or k.endswith("attn.hook_q")}
    g = sliced["blocks.0.moe.hook_g_row"]
    # TransformerLens keeps a length-1 position axis for pos_slice=-1; heads must stay whole
    assert g.shape == (B, 1, cfg["moe_heads"], cfg["moe_experts"])
    assert torch.equal(g, full["blocks.0.moe.hook_g_row"][:, -1:])
    assert torch.equal(sliced["blocks.0.attn.hook_pattern"], full["blocks.0.attn.hook_pattern"][:, :, -1:])
    assert torch.equal(sliced["blocks.0.attn.hook_q"], full["blocks.0.attn.hook_q"][:, -1:])
    logits, stopped = model.run_with_cache(tokens, stop_at_layer=1)
    assert logits.shape == (B, P, cfg["hidden_size"]) and "blocks.1.hook_resid_pre" not in stopped.keys()
    assert torch.equal(logits, full["blocks.1.hook_resid_pre"])


def test_hooks_removed_after_exception(released_folder):
    folder, cfg, _ = released_folder()
    model = HookedMONET.from_pretrained(folder)
    tokens = torch.randint(0, cfg["vocab_size"], (1, 4))
    clean = model(tokens)
    with pytest.raises(RuntimeError, match="boom"):
        with model.hooks(fwd_hooks=[("blocks.0.hook_mlp_out", lambda t, hook: t * 0)]):
            raise RuntimeError("boom")
    assert torch.equal(model(tokens), clean)
    assert all(len(hp.fwd_hooks) == 0 for hp in model.hook_dict.values())


def test_kv_cache_matches_full_forward(released_folder):
    folder, cfg, _ = released_folder(num_key_value_heads=2)
    model = HookedMONET.from_pretrained(folder)
    tokens = torch.randint(0, cfg["vocab_size"], (2, 7))
    full = model(tokens)
    cache = KeyValueCache(cfg["num_hidden_layers"])
    first = model(tokens[:, :4], past_kv_cache=cache)
    rest = [model(tokens[:, t:t + 1], past_kv_cache=cache) for t in range(4, 7)]
    assert torch.allclose(torch.cat([first, *rest], dim=1), full, atol=1e-5)


def test_generate_greedy_with_and_without_cache_and_with_hooks(released_folder):
    folder, cfg, _ = released_folder()
    model = HookedMONET.from_pretrained(folder)
    prompt = "def main(): "
    cached = model.generate(prompt, max_new_tokens=8, do_sample=False, stop_at_eos=False)
    uncached = model.generate(prompt, max_new_tokens=8, do_sample=False, stop_at_eos=False, use_past_kv_cache=False)
    assert cached == uncached and cached.startswith(prompt) and len(cached) > len(prompt)

    def flip_routing(g, hook):
        return g.flip(-1)

    with model.hooks(fwd_hooks=[(f"blocks.{layer}.moe.hook_g_col", flip_routing)
                                for layer in range(cfg["num_hidden_layers"])]):
        hooked = model.generate(prompt, max_new_tokens=8, do_sample=False, stop_at_eos=False)
    assert hooked != cached
    sampled = model.generate(["ab", "abc de"], max_new_tokens=5, seed=3, top_k=10, top_p=0.9, stop_at_eos=False)
    again = model.generate(["ab", "abc de"], max_new_tokens=5, seed=3, top_k=10, top_p=0.9, stop_at_eos=False)
    assert sampled == again and len(sampled) == 2


def test_batched_left_padded_generation_matches_single(released_folder):
    folder, cfg, _ = released_folder()
    model = HookedMONET.from_pretrained(folder)
    batched = model.generate(["ab", "abc de"], max_new_tokens=5, do_sample=False, stop_at_eos=False)
    # the left-padded short prompt and the unpadded long one both equal their single runs
    for prompt, text in zip(["ab", "abc de"], batched):
        assert text == model.generate(prompt, max_new_tokens=5, do_sample=False, stop_at_eos=False)
        assert text.startswith(prompt) and "<|pad|>" not in text and "<|bos|>" not in text


def test_tokenizer_round_trip(released_folder):
    folder, cfg, _ = released_folder()
    model = HookedMONET.from_pretrained(folder)
    tokens = model.to_tokens("hello world")
    assert tokens[0, 0].item() == 1 and model.to_string(tokens[0, 1:]) == "hello world"
    assert model.to_str_tokens("hi")[1:] == ["h", "i"]
