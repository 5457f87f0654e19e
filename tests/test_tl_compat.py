"""TransformerLens habits on HookedMONET (embedded monet-vd-tiny, no mocks): ActivationCache
decompositions against sums and hand-written RMSNorm/unembedding, logit attributions against the
logits, transformer_lens.utils.test_prompt against ranks computed from the logits,
transformer_lens.patching of the residual stream and of routing factors against causality and
hand-made hooks, and the token / hook helpers."""

from __future__ import annotations

import functools
import re

import pandas as pd
import pytest
import torch
from transformer_lens import patching
from transformer_lens.utilities import test_prompt as tl_test_prompt

from monet_interp import HookedMONET, load_model

PROMPT = "def main():\n    return x"
ATOL = 2e-4


@functools.lru_cache(maxsize=None)
def vd() -> HookedMONET:
    return HookedMONET.from_pretrained("monet-vd-tiny")


@functools.lru_cache(maxsize=None)
def run(name: str = "monet-vd-tiny"):
    model = vd() if name == "monet-vd-tiny" else load_model(name)
    tokens = model.to_tokens([PROMPT, "import os\nprint(os.pa"])
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    return model, tokens, logits, cache


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama RMSNorm written out (the reference for apply_ln_to_stack)."""
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


@pytest.mark.parametrize("name", ["monet-vd-tiny", "dense-tiny"])
def test_decompose_resid_sums_to_the_stream_and_ln_to_the_norm_output(name):
    model, tokens, logits, cache = run(name)
    n = model.cfg.n_layers
    stack, labels = cache.decompose_resid(return_labels=True)
    assert labels == ["embed"] + [f"{l}_{k}" for l in range(n) for k in ("attn_out", "mlp_out")]
    assert torch.allclose(stack.sum(0), cache[f"blocks.{n - 1}.hook_resid_post"], atol=ATOL)
    for layer in range(n):
        assert torch.allclose(cache.decompose_resid(layer).sum(0), cache["resid_pre", layer], atol=ATOL)
        assert torch.allclose(cache.decompose_resid(layer, mlp_input=True).sum(0), cache["resid_mid", layer], atol=ATOL)
    # each component times the final norm's scale and weight: the pieces add up to ln_final's output
    resid = cache[f"blocks.{n - 1}.hook_resid_post"]
    normed = rms_norm(resid, model.ln_final.weight, model.cfg.rms_norm_eps)
    assert torch.allclose(cache.apply_ln_to_stack(stack).sum(0), normed, atol=ATOL)
    assert torch.allclose(normed @ model.W_U, logits, atol=1e-3)
    # into block 1's MoE: the norm ln2 of block 1
    mid = cache.decompose_resid(1, mlp_input=True, apply_ln=True)
    want = rms_norm(cache["resid_mid", 1], model.blocks[1].ln2.weight, model.cfg.rms_norm_eps)
    assert torch.allclose(mid.sum(0), want, atol=ATOL)
    attn_only = cache.decompose_resid(mode="attn", incl_embeds=False, return_labels=True)[1]
    assert attn_only == [f"{l}_attn_out" for l in range(n)]


def test_accumulated_resid_is_the_logit_lens():
    model, tokens, logits, cache = run()
    n = model.cfg.n_layers
    accum, labels = cache.accumulated_resid(apply_ln=True, return_labels=True)
    assert labels == [f"{l}_pre" for l in range(n)] + ["final_post"]
    assert accum.shape == (n + 1, *tokens.shape, model.cfg.d_model)
    assert torch.allclose(accum[-1] @ model.W_U, logits, atol=1e-3)
    for l in range(n):  # every stream normalised by its own RMS, then the final weight
        want = rms_norm(cache["resid_pre", l], model.ln_final.weight, model.cfg.rms_norm_eps)
        assert torch.allclose(accum[l], want, atol=ATOL)
    raw = cache.accumulated_resid(layer=2, incl_mid=True)
    assert torch.equal(raw[1], cache["resid_mid", 0]) and raw.shape[0] == 5  # 0_pre 0_mid 1_pre 1_mid 2_pre


def test_logit_attrs_sum_to_the_logits_of_the_tokens():
    model, tokens, logits, cache = run()
    stack = cache.decompose_resid()
    answer = tokens[:, 1:]
    attrs = cache.logit_attrs(stack[:, :, :-1], tokens=answer, pos_slice=slice(0, -1))
    want = logits[:, :-1].gather(-1, answer[..., None])[..., 0]
    assert attrs.shape == (stack.shape[0], *answer.shape)
    assert torch.allclose(attrs.sum(0), want, atol=1e-3)
    other = torch.full_like(answer, model.to_single_token(" the"))
    diff = cache.logit_attrs(stack[:, :, :-1], tokens=answer, incorrect_tokens=other, pos_slice=slice(0, -1))
    assert torch.allclose(diff.sum(0), want - logits[:, :-1, model.to_single_token(" the")], atol=1e-3)
    # a single string token: attribution of the last position's logit of " x"
    last = cache.logit_attrs(stack[:, :, -1], tokens=" x", pos_slice=-1)
    assert torch.allclose(last.sum(0), logits[:, -1, model.to_single_token(" x")], atol=1e-3)


def test_stack_head_results_match_the_output_projection_per_head():
    model, tokens, logits, cache = run()
    n, heads, d_head = model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head
    stack, labels = cache.stack_head_results(layer=-1, return_labels=True)
    assert labels == [f"L{l}H{h}" for l in range(n) for h in range(heads)]
    assert stack.shape == (n * heads, *tokens.shape, model.cfg.d_model)
    for l in range(n):
        z = cache["z", l]
        weight = model.blocks[l].attn.o_proj.weight  # [d_model, heads * d_head]
        for h in range(heads):
            want = z[:, :, h] @ weight[:, h * d_head:(h + 1) * d_head].T
            assert torch.allclose(stack[l * heads + h], want, atol=1e-5)
        assert torch.allclose(stack[l * heads:(l + 1) * heads].sum(0), cache["attn_out", l], atol=ATOL)
    with_rest = cache.stack_head_results(layer=2, incl_remainder=True)
    assert torch.allclose(with_rest.sum(0), cache["resid_post", 1], atol=ATOL)


def test_full_resid_decomposition_and_what_monet_lacks():
    model, tokens, logits, cache = run()
    n = model.cfg.n_layers
    full, labels = cache.get_full_resid_decomposition(expand_neurons=False, return_labels=True)
    assert labels[-2:] == ["embed", "bias"] and f"{n - 1}_mlp_out" in labels and "L0H0" in labels
    assert torch.allclose(full.sum(0), cache["resid_post", n - 1], atol=ATOL)
    projected = cache.get_full_resid_decomposition(expand_neurons=False, apply_ln=True,
                                                   project_output_onto=model.W_U[:, 709])
    assert torch.allclose(projected.sum(0), logits[..., 709], atol=1e-3)
    into_mlp = cache.get_full_resid_decomposition(layer=1, mlp_input=True, expand_neurons=False)
    assert torch.allclose(into_mlp.sum(0), cache["resid_mid", 1], atol=ATOL)
    with pytest.raises(NotImplementedError, match="MONET has no neurons"):
        cache.get_full_resid_decomposition()
    with pytest.raises(NotImplementedError, match="no neurons"):
        cache.stack_neuron_results(layer=2)
    with pytest.raises(NotImplementedError, match="routing"):
        model.accumulated_bias(2, include_mlp_biases=True)


def test_test_prompt_prints_the_ranks_of_the_logits(capsys):
    model = vd()
    tl_test_prompt("def main():\n    return", "x", model, top_k=3)
    out = capsys.readouterr().out
    tokens = model.to_tokens("def main():\n    return x")
    with torch.no_grad():
        logits = model(tokens)[0, -2]
    answer = model.to_single_token(" x")
    rank = int((logits > logits[answer]).sum())
    assert "Tokenized prompt: ['<|bos|>', 'def', ' main', '():', '\\n   ', ' return']" in out
    assert re.search(rf"Rank: {rank}\s", out), out
    assert f"Ranks of the answer tokens: [(' x', {rank})]" in out
    top = model.to_str_tokens(logits.topk(1).indices)[0]
    assert f"Top 0th token. Logit: {logits.max().item():5.2f}" in out and f"|{top}|" in out


def _patch_inputs():
    model = vd()
    clean = model.to_tokens("def main():\n    return x")
    corrupted = clean.clone()
    corrupted[0, 2] = model.to_single_token(" the")  # " main" -> " the"
    target = model.to_single_token("\n")

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[0, -1, target]

    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
        clean_value, corrupt_value = metric(model(clean)), metric(model(corrupted))
    return model, clean, corrupted, clean_cache, metric, float(clean_value), float(corrupt_value)


def test_activation_patching_of_the_residual_stream():
    model, clean, corrupted, clean_cache, metric, clean_value, corrupt_value = _patch_inputs()
    with torch.no_grad():
        result = patching.get_act_patch_resid_pre(model, corrupted, clean_cache, metric)
    assert result.shape == (model.cfg.n_layers, clean.shape[1])
    assert abs(clean_value - corrupt_value) > 1e-3
    # before the corrupted token nothing differs (causal attention); at layer 0 of that position the
    # patch restores the whole clean run
    assert torch.allclose(result[:, :2], torch.full((model.cfg.n_layers, 2), corrupt_value), atol=1e-4)
    assert result[0, 2].item() == pytest.approx(clean_value, abs=1e-4)
    # the last position's stream at the last layer: only that block and the unembedding are clean
    last = model.cfg.n_layers - 1

    def restore(resid, hook):
        resid[:, -1] = clean_cache["resid_pre", last][:, -1]
        return resid

    with torch.no_grad():
        want = metric(model.run_with_hooks(corrupted, fwd_hooks=[(f"blocks.{last}.hook_resid_pre", restore)]))
    assert result[last, -1].item() == pytest.approx(float(want), abs=1e-5)


def test_activation_patching_of_routing_factors():
    model, clean, corrupted, clean_cache, metric, clean_value, corrupt_value = _patch_inputs()
    n_pos = clean.shape[1]
    with torch.no_grad():  # TransformerLens builds "blocks.{l}.hook_g_row": the short MoE alias
        g_row = patching.generic_activation_patch(model, corrupted, clean_cache, metric,
                                                  patching.layer_pos_patch_setter, "g_row",
                                                  index_axis_names=("layer", "pos"))
    assert g_row.shape == (model.cfg.n_layers, n_pos)
    assert torch.allclose(g_row[:, :2], torch.full((model.cfg.n_layers, 2), corrupt_value), atol=1e-4)
    assert (g_row[:, 2:] - corrupt_value).abs().max() > 1e-4  # routing of the changed token matters
    for layer, pos in [(1, 2), (3, n_pos - 1)]:
        def put(g, hook, pos=pos, layer=layer):
            g[:, pos] = clean_cache[f"blocks.{layer}.moe.hook_g_row"][:, pos]
            return g

        with torch.no_grad():
            want = metric(model.run_with_hooks(corrupted, fwd_hooks=[(f"blocks.{layer}.moe.hook_g_row", put)]))
        assert g_row[layer, pos].item() == pytest.approx(float(want), abs=1e-5)
    # raw router logits exist on router layers only: patch them there, one routing head at a time
    index = pd.DataFrame([(l, 2, h) for l in model.cfg.router_layers for h in range(model.cfg.moe_heads)],
                         columns=["layer", "pos", "head_index"])
    with torch.no_grad():
        heads = patching.generic_activation_patch(model, corrupted, clean_cache, metric,
                                                  patching.layer_pos_head_vector_patch_setter, "router_logits_col",
                                                  index_df=index)
    assert heads.shape == (len(index),) and torch.isfinite(heads).all()
    assert clean_cache["router_logits_col", 0].shape[2] == model.cfg.moe_heads
    with pytest.raises(KeyError):
        clean_cache["router_logits_col", 1]  # layer 1 reuses layer 0's router: no logits


def test_tokens_hooks_and_unembedding_helpers():
    model = vd()
    assert model.W_U.shape == (model.cfg.d_model, model.cfg.d_vocab)
    assert torch.equal(model.W_U, model.embed.W_E.T)  # tied embeddings
    assert torch.equal(model.to_tokens(PROMPT, prepend_bos=None), model.to_tokens(PROMPT))
    assert model.to_str_tokens(PROMPT, prepend_bos=None)[0] == "<|bos|>"
    assert "".join(model.to_str_tokens(PROMPT, prepend_bos=False)) == PROMPT
    with pytest.raises(ValueError, match="not one"):
        model.to_single_token(" return x")
    ids = torch.tensor([[model.to_single_token(" x"), 5], [7, 9]])
    assert torch.equal(model.tokens_to_residual_directions(ids)[1, 0], model.W_U[:, 7])
    assert torch.equal(model.tokens_to_residual_directions(" x"), model.W_U[:, 709])
    assert model.W_O.shape == (model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head, model.cfg.d_model)
    tokens = model.to_tokens(PROMPT)
    with torch.no_grad():
        clean = model(tokens)

        def zero(x, hook):
            return torch.zeros_like(x)

        kept = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_mlp_out", zero)], reset_hooks_end=False)
        assert not torch.allclose(kept, clean)
        assert torch.equal(model(tokens), kept)  # the hook stayed
        model.reset_hooks()
        assert torch.equal(model(tokens), clean)
        with model.hooks(fwd_hooks=[("blocks.0.hook_g_col", lambda g, hook: g.flip(-1))]):  # alias name
            flipped = model(tokens)
        assert not torch.allclose(flipped, clean) and torch.equal(model(tokens), clean)
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())
