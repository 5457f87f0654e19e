"""Expert editing without expansion: exactness against the explicit E^2 expansion, isolation of
pruned experts, attribution against autograd, the context manager, JSON and validation."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from expansion_reference import edited_weights, expert_outputs, expert_weights, naive_moe_output, naive_moes
from tiny_models import cast_keeping_router_stats
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monet_interp import ExpertEdit, HookedMONET, MonetConfig
from monet_interp.components.moe import MonetMoE
from monet_interp.editing import (
    EditError,
    EditSet,
    LayerEdit,
    active_edits,
    check_edits,
    compile_plan,
    edits_from_json,
    edits_to_json,
    expert_attribution,
    masked_mix_torch,
)
from monet_interp.editing.plan import LayerPlan

ROOT = Path(__file__).resolve().parents[1]
DECOMPOSITIONS = ("horizontal", "vertical")
PATHS = ("list", "sparse", "dense")
SETTINGS = settings(max_examples=20, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---------------------------------------------------------------------------- fixtures
def tiny_cfg(decompose: str, experts: int = 8, heads: int = 2) -> MonetConfig:
    return MonetConfig(vocab_size=40, hidden_size=16, num_hidden_layers=4, num_attention_heads=2, moe_dim=4,
                       moe_heads=heads, moe_experts=experts, moe_topk=2, moe_groups=2, moe_decompose=decompose,
                       max_position_embeddings=32, initializer_range=0.3)


@functools.lru_cache(maxsize=None)
def tiny_model(decompose: str, dtype: torch.dtype = torch.float32) -> HookedMONET:
    """4 layers in 2 routing groups, E=8, H=2; MoE biases random so every term of E_ij is exercised."""
    model = HookedMONET(tiny_cfg(decompose))
    model.init_weights(seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".moe." in name and (name.endswith(".bias") or name.endswith((".b", ".b1", ".b2"))):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    return cast_keeping_router_stats(model, dtype) if dtype != torch.float32 else model


def tokens_for(seed: int = 0, shape=(2, 6)) -> torch.Tensor:
    return torch.randint(0, 40, shape, generator=torch.Generator().manual_seed(seed))


def random_moe(decompose: str, experts: int, heads: int, moe_dim: int = 4, d: int = 8, seed: int = 0) -> MonetMoE:
    torch.manual_seed(seed)
    moe = MonetMoE(d, experts, moe_dim, heads, decompose)
    with torch.no_grad():
        for param in moe.parameters():
            param.normal_(0, 0.4)
    return moe


def sparse_factors(shape, keep: int, seed: int) -> torch.Tensor:
    """Softmax over the top `keep` of random logits (like the router): exact zeros elsewhere."""
    logits = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 2
    kth = logits.topk(keep, dim=-1).values[..., -1:]
    return torch.softmax(logits.masked_fill(logits < kth, float("-inf")), dim=-1)


def one_layer_config(experts: int, heads: int) -> MonetConfig:
    """The config of a single MoE layer (one routing group) with E experts and H heads."""
    return MonetConfig(num_hidden_layers=1, moe_groups=1, moe_experts=experts, moe_heads=heads, moe_topk=1)


def layer_plan(edits, experts: int, heads: int) -> LayerPlan:
    return compile_plan(edits, one_layer_config(experts, heads)).layers[0]


# ---------------------------------------------------------------------------- edit strategies
@st.composite
def edit_lists(draw, experts: int, heads: int, scopes: list[dict], max_size: int = 10) -> list[ExpertEdit]:
    """Random edits on distinct experts (so never conflicting): all four ops, per-head and all-heads."""
    pairs = draw(st.lists(st.tuples(st.integers(0, experts - 1), st.integers(0, experts - 1)),
                          min_size=1, max_size=max_size, unique=True))
    out = []
    for i, j in pairs:
        op = draw(st.sampled_from(["prune", "scale", "set", "add"]))
        value = {"prune": None, "scale": draw(st.floats(0, 3)),
                 "set": draw(st.floats(-1.5, 1.5)), "add": draw(st.floats(-1.5, 1.5))}[op]
        head_list = draw(st.none() | st.lists(st.integers(0, heads - 1), min_size=1, unique=True))
        scope = draw(st.sampled_from(scopes))
        out.append(ExpertEdit(i, j, op, value, heads=head_list, **scope))
    return out


# ---------------------------------------------------------------------------- reference sanity
@pytest.mark.parametrize("decompose", DECOMPOSITIONS)
def test_expansion_reference_matches_stock_moe(decompose):
    moe = random_moe(decompose, 8, 2)
    x = torch.randn(3, 5, 8)
    g_row, g_col = sparse_factors((3, 5, 2, 8), 3, 1), sparse_factors((3, 5, 2, 8), 3, 2)
    ref = naive_moe_output(moe, x, g_row, g_col)
    assert (moe(x, g_row, g_col) - ref).abs().max() < 1e-5
    per_head = expert_weights(g_row, g_col, per_head=True)
    assert (naive_moe_output(moe, x, g_row, g_col, per_head) - ref).abs().max() < 1e-5


# ---------------------------------------------------------------------------- MoE-level exactness
@pytest.mark.parametrize("decompose", DECOMPOSITIONS)
@given(data=st.data())
@SETTINGS
def test_moe_level_matches_expansion(decompose, data):
    experts = data.draw(st.sampled_from([8, 16]), label="E")
    heads = data.draw(st.integers(1, 3), label="H")
    seed = data.draw(st.integers(0, 10_000), label="seed")
    edits = data.draw(edit_lists(experts, heads, [{"layer": 0}], max_size=12), label="edits")
    moe = random_moe(decompose, experts, heads, seed=seed)
    x = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(seed))
    g_row = sparse_factors((2, 4, heads, experts), 3, seed + 1)
    g_col = sparse_factors((2, 4, heads, experts), 3, seed + 2)
    ref = naive_moe_output(moe, x, g_row, g_col, edited_weights(edits, 0, one_layer_config(experts, heads), g_row, g_col))
    plan = layer_plan(edits, experts, heads)
    for path in PATHS:
        moe.expert_edit = LayerEdit(plan, "torch", path)
        try:
            out = moe(x, g_row, g_col)
        finally:
            moe.expert_edit = None
        assert (out - ref).abs().max().item() <= 1e-5, (path, edits)


@pytest.mark.parametrize("decompose", DECOMPOSITIONS)
def test_moe_level_large_mask_and_dense_routing(decompose):
    """E=64 with ~600 edits (auto picks the sparse path) and fully dense routing (dense path)."""
    experts, heads = 64, 2
    moe = random_moe(decompose, experts, heads, moe_dim=4, d=8, seed=3)
    gen = torch.Generator().manual_seed(0)
    flat = torch.randperm(experts * experts, generator=gen)[:600]
    edits = ExpertEdit.from_flat(flat[:500], experts, "prune", layer=0)
    edits += ExpertEdit.from_flat(flat[500:], experts, "scale", 0.25, layer=0, heads=[1])
    x = torch.randn(1, 6, 8, generator=gen)
    cfg = one_layer_config(experts, heads)
    plan = layer_plan(edits, experts, heads)
    for keep in (4, experts):
        g_row = sparse_factors((1, 6, heads, experts), keep, 1)
        g_col = sparse_factors((1, 6, heads, experts), keep, 2)
        ref = naive_moe_output(moe, x, g_row, g_col, edited_weights(edits, 0, cfg, g_row, g_col))
        for path in ("auto", *PATHS):
            seam = LayerEdit(plan, "torch", path)
            moe.expert_edit = seam
            with torch.no_grad():
                out = moe(x, g_row, g_col)
            moe.expert_edit = None
            assert (out - ref).abs().max().item() <= 1e-5, (keep, path)
            if path == "auto":
                assert seam.last_path == ("sparse" if keep == 4 else "dense")


@pytest.mark.parametrize("decompose", DECOMPOSITIONS)
def test_gradients_match_expansion(decompose):
    """Gradients w.r.t. the layer's weights and its routing factors, every path, vs the expansion."""
    experts, heads = 8, 2
    moe = random_moe(decompose, experts, heads, seed=11)
    edits = [ExpertEdit(i, (i * 3) % experts, "prune", layer=0) for i in range(experts)]
    edits += [ExpertEdit(1, 2, "set", 0.6, layer=0, heads=[0]), ExpertEdit(4, 6, "scale", 1.7, layer=0),
              ExpertEdit(6, 1, "add", -0.3, layer=0)]
    plan, cfg = layer_plan(edits, experts, heads), one_layer_config(experts, heads)
    x = torch.randn(1, 5, 8, generator=torch.Generator().manual_seed(11))
    g_row0, g_col0 = sparse_factors((1, 5, heads, experts), 3, 12), sparse_factors((1, 5, heads, experts), 3, 13)

    def grads(run):
        g_row, g_col = g_row0.clone().requires_grad_(), g_col0.clone().requires_grad_()
        out = run(g_row, g_col)
        params = list(moe.parameters())
        return torch.autograd.grad(out.square().sum(), [*params, g_row, g_col])

    ref = grads(lambda g1, g2: naive_moe_output(moe, x, g1, g2, edited_weights(edits, 0, cfg, g1, g2)))
    for path in (*PATHS, "auto"):
        seam = LayerEdit(plan, "torch", path)
        moe.expert_edit = seam
        try:
            got = grads(lambda g1, g2: moe(x, g1, g2))
        finally:
            moe.expert_edit = None
        if path == "auto":
            assert seam.last_path != "sparse"  # d/dg is needed: auto keeps gradients exact
        routed = [g_row0 != 0, g_col0 != 0]
        for k, (a, b) in enumerate(zip(got, ref)):
            if path == "sparse" and k >= len(got) - 2:  # sparse: d/dg exact where g != 0
                a, b = a[routed[k - len(got) + 2]], b[routed[k - len(got) + 2]]
            assert (a - b).abs().max() <= 1e-4 * (1 + b.abs().max()), (path, k)


def test_routing_lists_enumerate_every_routed_pair_in_chunks():
    from monet_interp.editing.engine import RoutingLists

    g1, g2 = sparse_factors((7, 3, 16), 4, 0), sparse_factors((7, 3, 16), 5, 1)
    g1[2, 1] = 0  # a (token, head) with nothing routed
    brute = {(t * 3 + h, i, j) for t in range(7) for h in range(3) for i in range(16) for j in range(16)
             if g1[t, h, i] != 0 and g2[t, h, j] != 0}
    lists = RoutingLists(g1, g2)
    assert lists.n_pairs == len(brute)
    for chunk in (1, 7, 50, 10_000):
        pieces = list(lists.pairs(chunk))
        found = [tuple(v) for row, i, j in pieces for v in torch.stack([row, i, j], 1).tolist()]
        assert len(found) == len(brute) and set(found) == brute
        if chunk == 50:
            assert len(pieces) > 1


def test_masked_mix_torch_matches_einsum():
    x = torch.randn(5, 8, 3)
    g1, g2 = sparse_factors((5, 2, 8), 8, 0), sparse_factors((5, 2, 8), 8, 1)
    S = torch.rand(2, 8, 8)
    z, c = masked_mix_torch(x, g1, g2, S)
    A = torch.einsum("thi,thj,hij->tij", g1, g2, S)
    assert torch.allclose(z, torch.einsum("tij,tim->tjm", A, x), atol=1e-6)
    assert torch.allclose(c, A.sum(1), atol=1e-6)


# ---------------------------------------------------------------------------- model-level exactness
@pytest.mark.parametrize("decompose", DECOMPOSITIONS)
@given(data=st.data())
@SETTINGS
def test_model_logits_match_expansion(decompose, data):
    model = tiny_model(decompose)
    cfg = model.cfg
    scopes = [{"group": 0}, {"group": 1}, {"group": "all"}] + [{"layer": layer} for layer in range(4)]
    edits = data.draw(edit_lists(cfg.moe_experts, cfg.moe_heads, scopes, max_size=8), label="edits")
    path = data.draw(st.sampled_from(("auto", *PATHS)), label="path")
    tokens = tokens_for(data.draw(st.integers(0, 100), label="tokens"))
    with torch.no_grad():
        out = model.run_with_edits(tokens, edits, path=path)
        with naive_moes(model, lambda layer, g1, g2: edited_weights(edits, layer, cfg, g1, g2)):
            ref = model(tokens)
    assert (out - ref).abs().max().item() <= 1e-5, (path, edits)


@pytest.mark.parametrize("decompose", DECOMPOSITIONS)
def test_edits_change_the_model_and_keep_gradients(decompose):
    model = tiny_model(decompose)
    tokens = tokens_for(5)
    edits = [ExpertEdit(i, j, "prune", group=0) for i in range(4) for j in range(8)]
    base = model(tokens)
    with model.edit_experts(edits):
        edited = model(tokens)
        loss = model(tokens, return_type="loss")
    assert (edited - base).abs().max() > 1e-2  # the edits matter
    loss.backward()  # autograd through the edited mix (list/dense path under grad)
    grads = [p.grad for p in model.blocks[0].moe.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------- isolation of a pruned expert
def _effective_weights_hd(plan, g_row, g_col, path):
    """Read A'[t,i,j] off the edited HD mix by feeding one-hot activations x[t,i,:] = e_i."""
    n_tok, _, experts = g_row.shape
    x = torch.eye(experts).expand(n_tok, experts, experts)
    z, c = LayerEdit(plan, "torch", path).mix_hd(x, g_row, g_col)
    return z.transpose(1, 2), c  # z[t,j,i] = A'[t,i,j]


@pytest.mark.parametrize("path", PATHS)
def test_pruning_leaves_every_other_expert_untouched(path):
    experts, heads = 8, 2
    g_row = sparse_factors((6, heads, experts), 4, 0)
    g_col = sparse_factors((6, heads, experts), 4, 1)
    A = expert_weights(g_row, g_col)
    i, j = [int(v) for v in torch.nonzero(A.sum(0) == A.sum(0).max())[0]]  # a well-routed expert
    plan = layer_plan([ExpertEdit(i, j, "prune", layer=0)], experts, heads)
    with torch.no_grad():
        A_edit, c = _effective_weights_hd(plan, g_row, g_col, path)
        x_row = torch.eye(experts).expand(6, experts, experts)
        z11, z12, r, z21, z22, c_vd = LayerEdit(plan, "torch", path).mix_vd(x_row, x_row, g_row, g_col)
    expected = A.clone()
    expected[:, i, j] = 0
    assert A[:, i, j].abs().max() > 0.1
    for got in (A_edit, z21.transpose(1, 2), z12):  # HD, VD bottom (to_cols), VD top (to_rows)
        assert (got - expected).abs().max() < 1e-6  # row i (ij') and column j (i'j) included
    assert (c - expected.sum(1)).abs().max() < 1e-6 and (c_vd - expected.sum(1)).abs().max() < 1e-6
    assert (r - expected.sum(2)).abs().max() < 1e-6


@pytest.mark.parametrize("decompose", DECOMPOSITIONS)
def test_pruned_output_loses_exactly_that_experts_contribution(decompose):
    experts, heads = 8, 2
    moe = random_moe(decompose, experts, heads, seed=4)
    x = torch.randn(1, 6, 8, generator=torch.Generator().manual_seed(4))
    g_row, g_col = sparse_factors((1, 6, heads, experts), 4, 5), sparse_factors((1, 6, heads, experts), 4, 6)
    A = expert_weights(g_row, g_col)[0]
    i, j = [int(v) for v in torch.nonzero(A.sum(0) == A.sum(0).max())[0]]
    contributions = (A[..., None] * expert_outputs(moe, x[0]))[None]  # [1, T, E, E, d]: g1*g2*E_ij(x)
    with torch.no_grad():
        base = moe(x, g_row, g_col)
        for path in PATHS:
            moe.expert_edit = LayerEdit(layer_plan([ExpertEdit(i, j, "prune", layer=0)], experts, heads), "torch", path)
            edited = moe(x, g_row, g_col)
            moe.expert_edit = None
            assert (base - edited - contributions[:, :, i, j]).abs().max() < 1e-5
            others = contributions.sum((2, 3)) - contributions[:, :, i, j]
            assert (edited - others).abs().max() < 1e-5


# ---------------------------------------------------------------------------- attribution
def _autograd_attribution(model, tokens, per_head):
    cfg = model.cfg
    shape = (cfg.moe_heads, cfg.moe_experts, cfg.moe_experts) if per_head else (cfg.moe_experts, cfg.moe_experts)
    scales = [torch.ones(shape, dtype=model.dtype, requires_grad=True) for _ in range(cfg.num_routers)]

    def weights(layer, g_row, g_col):
        return expert_weights(g_row, g_col, per_head=per_head) * scales[cfg.group_of_layer(layer)]

    with naive_moes(model, weights):
        loss = model(tokens, return_type="loss")
    return torch.stack(torch.autograd.grad(loss, scales))


@pytest.mark.parametrize("decompose", DECOMPOSITIONS)
@pytest.mark.parametrize("per_head", [False, True])
def test_attribution_matches_autograd_through_expansion(decompose, per_head):
    model = tiny_model(decompose, torch.float64)
    tokens = tokens_for(7, (2, 7))
    ref = _autograd_attribution(model, tokens, per_head)
    assert ref.abs().max() > 1e-3
    for method in ("gemm", "sparse"):
        got = expert_attribution(model, tokens, per_head=per_head, method=method)
        assert got.shape == ref.shape
        assert ((got - ref).abs().max() / ref.abs().max()).item() <= 1e-5, method
    subset = expert_attribution(model, tokens, groups=[1], per_head=per_head)
    assert torch.allclose(subset[0], ref[1], rtol=1e-6, atol=1e-12)
    assert not active_edits(model)


def test_attribution_custom_metric_float32():
    model = tiny_model("vertical")
    tokens = tokens_for(8)
    got = expert_attribution(model, tokens, metric_fn=lambda logits: logits[:, -1, 3].sum())
    scale = torch.ones(8, 8, requires_grad=True)
    with naive_moes(model, lambda layer, g1, g2: expert_weights(g1, g2) * scale if layer < 2 else None):
        metric = model(tokens)[:, -1, 3].sum()
    (ref,) = torch.autograd.grad(metric, scale)
    assert ((got[0] - ref).abs().max() / ref.abs().max()).item() < 1e-4
    with pytest.raises(EditError, match="does not exist"):
        expert_attribution(model, tokens, groups=[2])


# ---------------------------------------------------------------------------- context manager
def test_empty_edits_are_bit_identical_and_attach_nothing():
    model = tiny_model("vertical")
    tokens = tokens_for(1)
    base = model(tokens)
    with model.edit_experts([]) as plan:
        assert not plan.layers and not active_edits(model)
        assert torch.equal(model(tokens), base)
    assert torch.equal(model.run_with_edits(tokens, EditSet()), base)


def test_edits_and_hooks_are_removed_after_an_exception():
    model = tiny_model("horizontal")
    edits = [ExpertEdit(0, 0, "prune", group=0), ExpertEdit(1, 1, "set", 0.5, layer=3)]
    with pytest.raises(RuntimeError, match="boom"):
        with model.edit_experts(edits):
            with model.hooks(fwd_hooks=[("blocks.0.moe.hook_g_row", lambda t, hook: t)]):
                assert set(active_edits(model)) == {0, 1, 3}
                model(tokens_for(2))
                raise RuntimeError("boom")
    assert not active_edits(model)
    assert all(not point.fwd_hooks for point in model.hook_dict.values())
    tokens = tokens_for(2)
    with naive_moes(model):
        ref = model(tokens)
    assert (model(tokens) - ref).abs().max() < 1e-5


@pytest.mark.parametrize("decompose", DECOMPOSITIONS)
def test_edits_compose_with_routing_hooks(decompose):
    model = tiny_model(decompose)
    cfg = model.cfg
    edits = [ExpertEdit(i, (3 * i) % 8, "scale", 0.3, group=0) for i in range(8)]
    edits += [ExpertEdit(2, 5, "set", 0.8, layer=1, heads=[1])]

    def boost(g_row, hook):  # a user hook acting on g before the mix
        return g_row * torch.tensor([1.0, 2.0])[:, None]

    hooks = [("blocks.1.moe.hook_g_row", boost)]
    tokens = tokens_for(3)
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        with model.edit_experts(edits):
            out = model(tokens)
        with naive_moes(model, lambda layer, g1, g2: edited_weights(edits, layer, cfg, g1, g2)):
            ref = model(tokens)
        with model.edit_experts(edits):
            hooked, _ = model.run_with_cache(tokens)
            fwd = model.run_with_hooks(tokens, fwd_hooks=[("blocks.2.moe.hook_g_col", lambda t, hook: t)])
    assert (out - ref).abs().max() < 1e-5
    assert torch.equal(hooked, out) and torch.equal(fwd, out)


def test_scope_group_layer_and_all():
    model = tiny_model("vertical")
    tokens = tokens_for(4)
    group = [ExpertEdit(1, 2, "prune", group=1), ExpertEdit(3, 3, "add", 0.5, group=1, heads=[0])]
    per_layer = [e.replace(layer=layer) for e in group for layer in (2, 3)]
    with model.edit_experts(group) as plan:
        assert set(active_edits(model)) == {2, 3} and plan.layers[2] is plan.layers[3]  # shared plan
        out_group = model(tokens)
    with model.edit_experts(per_layer):
        out_layers = model(tokens)
    assert torch.equal(out_group, out_layers) or (out_group - out_layers).abs().max() < 1e-6
    with model.edit_experts([ExpertEdit(1, 2, "prune", layer=3)]):
        assert set(active_edits(model)) == {3}
        _, cache = model.run_with_cache(tokens)
    _, base_cache = model.run_with_cache(tokens)
    for layer in range(3):  # layers before the edited one are untouched, bit for bit
        assert torch.equal(cache[f"blocks.{layer}.hook_mlp_out"], base_cache[f"blocks.{layer}.hook_mlp_out"])
    with model.edit_experts([ExpertEdit(0, 0, "prune", group="all")]):
        assert set(active_edits(model)) == {0, 1, 2, 3}


def test_nested_contexts_and_generate():
    model = tiny_model("horizontal")
    tokens = tokens_for(6, (1, 4))
    steer = [ExpertEdit(5, 5, "set", 3.0, group="all")]
    with model.edit_experts([ExpertEdit(0, 1, "prune", group=0)]):
        with pytest.raises(EditError, match="already have expert edits"):
            with model.edit_experts([ExpertEdit(0, 2, "prune", layer=1)]):
                pass
        with model.edit_experts([ExpertEdit(0, 2, "prune", group=1)]):  # disjoint layers: fine
            assert set(active_edits(model)) == {0, 1, 2, 3}
        assert set(active_edits(model)) == {0, 1}
    with model.edit_experts(steer):
        cached = model.generate(tokens, max_new_tokens=4, do_sample=False)
        uncached = model.generate(tokens, max_new_tokens=4, do_sample=False, use_past_kv_cache=False)
    assert torch.equal(cached, uncached)
    with naive_moes(model, lambda layer, g1, g2: edited_weights(steer, layer, model.cfg, g1, g2)):
        reference = model.generate(tokens, max_new_tokens=4, do_sample=False, use_past_kv_cache=False)
    assert torch.equal(cached, reference)


# ---------------------------------------------------------------------------- data: JSON, spellings
def test_json_round_trip(tmp_path):
    edits = [ExpertEdit(1, 2, "prune", group=0), ExpertEdit(3, 4, "scale", 0.5, layer=2, heads=[1, 0]),
             ExpertEdit(5, 6, "set", 1.25, group="all"), ExpertEdit(7, 0, "add", -0.5, layer=1),
             ExpertEdit(0, 0, "scale", -1.0, group=1, allow_negative=True)]
    meta = {"criterion": "2x second domain", "seed": 3}
    path = tmp_path / "edits.json"
    text = edits_to_json(edits, path, metadata=meta)
    loaded = edits_from_json(path)
    assert loaded.edits == edits and loaded.metadata == meta
    assert EditSet.from_json(text) == loaded
    assert edits_from_json(json.dumps([e.to_dict() for e in edits])).edits == edits
    assert [ExpertEdit.from_json(e.to_json()) for e in edits] == edits
    assert EditSet(edits, meta).to_json() == text
    import pickle
    assert pickle.loads(pickle.dumps(edits)) == edits
    check_edits(loaded, tiny_cfg("vertical"))


def test_flat_ids_and_matrices():
    assert ExpertEdit.from_flat(2 * 8 + 5, 8, "prune", group=0) == ExpertEdit(2, 5, "prune", group=0)
    assert ExpertEdit.from_flat([0, 9], 8, "scale", 2.0, layer=1) == [
        ExpertEdit(0, 0, "scale", 2.0, layer=1), ExpertEdit(1, 1, "scale", 2.0, layer=1)]
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[1, 2] = mask[3, 4] = True
    assert ExpertEdit.from_matrix(mask, group=0) == [ExpertEdit(1, 2, "prune", group=0),
                                                     ExpertEdit(3, 4, "prune", group=0)]
    scales = torch.ones(2, 8, 8)
    scales[1, 0, 7], scales[0, 6, 6] = 0.5, 0.0
    assert ExpertEdit.from_matrix(scales, layer=2) == [ExpertEdit(6, 6, "prune", layer=2, heads=[0]),
                                                       ExpertEdit(0, 7, "scale", 0.5, layer=2, heads=[1])]
    # a multiplier matrix through the engine equals the dense multiplier itself
    model = tiny_model("horizontal")
    S = torch.rand(8, 8, generator=torch.Generator().manual_seed(0))
    tokens = tokens_for(9)
    with torch.no_grad():
        out = model.run_with_edits(tokens, ExpertEdit.from_matrix(S, group=0))
        with naive_moes(model, lambda layer, g1, g2: expert_weights(g1, g2) * (S if layer < 2 else 1)):
            ref = model(tokens)
    assert (out - ref).abs().max() < 1e-5


@pytest.mark.parametrize("make, message", [
    (lambda: ExpertEdit(0, 0, "delete", group=0), "unknown op"),
    (lambda: ExpertEdit(0, 0, "set", group=0), "needs a value"),
    (lambda: ExpertEdit(0, 0, "scale", group=0), "needs a value"),
    (lambda: ExpertEdit(0, 0, "add", layer=0), "needs a value"),
    (lambda: ExpertEdit(0, 0, "prune", 0.0, group=0), "prune takes no value"),
    (lambda: ExpertEdit(0, 0, "scale", -0.5, group=0), "negative scale"),
    (lambda: ExpertEdit(0, 0, "set", float("nan"), group=0), "finite"),
    (lambda: ExpertEdit(0, 0, "prune"), "no scope"),
    (lambda: ExpertEdit(0, 0, "prune", group=0, layer=1), "not both"),
    (lambda: ExpertEdit(0, 0, "prune", group="some"), "integer or 'all'"),
    (lambda: ExpertEdit(-1, 0, "prune", group=0), ">= 0"),
    (lambda: ExpertEdit(0, 0, "prune", group=0, heads=[]), "at least one head"),
    (lambda: ExpertEdit(0, 0, "prune", group=0, heads=[1, 1]), "twice"),
    (lambda: ExpertEdit.from_flat(64, 8, "prune", group=0), "flat expert id 64 is out of range"),
    (lambda: ExpertEdit.from_matrix(torch.ones(3, 4), group=0), "matrix must be"),
    (lambda: ExpertEdit.from_dict({"i": 0, "j": 0, "op": "prune", "group": 0, "colour": 1}), "unknown edit field"),
    (lambda: edits_from_json('{"format": "other", "edits": []}'), "unknown format"),
    (lambda: EditSet("not edits"), "expected ExpertEdit"),
    (lambda: EditSet(torch.ones(8, 8, dtype=torch.bool)), "from_matrix"),
])
def test_intrinsic_validation_errors(make, message):
    with pytest.raises(EditError, match=message):
        make()


@pytest.mark.parametrize("edits, message", [
    ([ExpertEdit(8, 0, "prune", group=0)], "out of range"),
    ([ExpertEdit(0, 9, "prune", layer=0)], "out of range"),
    ([ExpertEdit(0, 0, "prune", layer=4)], "layer 4 does not exist"),
    ([ExpertEdit(0, 0, "prune", group=2)], "routing group 2 does not exist"),
    ([ExpertEdit(0, 0, "prune", group=0, heads=[2])], "head 2 is out of range"),
    ([ExpertEdit(0, 0, "prune", group=0), ExpertEdit(0, 0, "scale", 0.5, layer=1)], "conflicting edits"),
    ([ExpertEdit(0, 0, "prune", group=0), ExpertEdit(0, 0, "prune", group="all")], "conflicting edits"),
    ([ExpertEdit(0, 0, "set", 1.0, layer=0, heads=[0]), ExpertEdit(0, 0, "add", 1.0, layer=0)], "conflicting"),
    ([ExpertEdit(0, 0, "prune", layer=0, heads=[0, 1]), ExpertEdit(0, 0, "add", 1.0, layer=0, heads=[1])], "conflict"),
])
def test_model_validation_errors(edits, message):
    model = tiny_model("vertical")
    with pytest.raises(EditError, match=message):
        with model.edit_experts(edits):
            pass
    assert not active_edits(model)


def test_disjoint_heads_on_one_expert_are_allowed():
    model = tiny_model("vertical")
    edits = [ExpertEdit(0, 0, "prune", layer=0, heads=[0]), ExpertEdit(0, 0, "set", 0.4, layer=0, heads=[1]),
             ExpertEdit(0, 0, "scale", 2.0, layer=1)]
    tokens = tokens_for(10)
    with torch.no_grad():
        out = model.run_with_edits(tokens, edits, backend="torch")
        with naive_moes(model, lambda layer, g1, g2: edited_weights(edits, layer, model.cfg, g1, g2)):
            ref = model(tokens)
    assert (out - ref).abs().max() < 1e-5
    with pytest.raises(EditError, match="backend"):
        model.run_with_edits(tokens, edits, backend="cuda")
    with pytest.raises(EditError, match="path"):
        model.run_with_edits(tokens, edits, path="fast")


# ---------------------------------------------------------------------------- Triton backend (interpreter)
TRITON_SCRIPT = textwrap.dedent("""
    import os, sys, torch
    sys.path.insert(0, {tests!r})
    from monet_interp.kernels import dispatch
    dispatch.use_interpreter()
    from expansion_reference import edited_weights, naive_moe_output
    from monet_interp.components.moe import MonetMoE
    from monet_interp.editing import ExpertEdit, LayerEdit, compile_plan

    class OneLayer:
        def __init__(self, experts, heads):
            self.moe_experts, self.moe_heads = experts, heads
            self.num_hidden_layers, self.num_routers, self.moe_groups = 1, 1, 1

        def layers_of_group(self, group):
            return [0]

    def random_moe(decompose, experts, heads, seed):
        torch.manual_seed(seed)
        moe = MonetMoE(8, experts, 4, heads, decompose)
        with torch.no_grad():
            for param in moe.parameters():
                param.normal_(0, 0.4)
        return moe

    def sparse_factors(shape, keep, seed):
        logits = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 2
        kth = logits.topk(keep, dim=-1).values[..., -1:]
        return torch.softmax(logits.masked_fill(logits < kth, float("-inf")), dim=-1)

    worst = 0.0
    for decompose in ("horizontal", "vertical"):
        E, H = 16, 2
        moe = random_moe(decompose, E, H, seed=1)
        x = torch.randn(1, 5, 8)
        g1, g2 = sparse_factors((1, 5, H, E), 3, 1), sparse_factors((1, 5, H, E), 3, 2)
        lin = [ExpertEdit(i, (5 * i + 1) % E, "prune", layer=0) for i in range(E)]
        lin += [ExpertEdit(i, (5 * i + 2) % E, "scale", 0.5, layer=0, heads=[1]) for i in range(E)]
        mixed = lin[:10] + [ExpertEdit(3, 3, "set", 0.7, layer=0, heads=[0]), ExpertEdit(4, 9, "add", -0.2, layer=0)]
        for edits, paths in ((lin, ("list", "dense")), (mixed, ("list", "dense", "sparse"))):
            plan = compile_plan(edits, OneLayer(E, H)).layers[0]
            ref = naive_moe_output(moe, x, g1, g2, edited_weights(edits, 0, OneLayer(E, H), g1, g2))
            for path in paths:
                seam = LayerEdit(plan, "triton", path)
                moe.expert_edit = seam
                with torch.no_grad():
                    out = moe(x, g1, g2)
                moe.expert_edit = None
                assert seam.last_backend == "triton", seam.last_backend
                worst = max(worst, (out - ref).abs().max().item())
    print("MAXERR", worst)
""")


def _kernel_modules_present() -> bool:
    return all((ROOT / "kernels" / name).is_file() for name in ("correction_list.py", "mask_gemm.py", "dispatch.py"))


@pytest.mark.skipif(not _kernel_modules_present(), reason="Triton kernels (kernels/) not present")
def test_triton_backend_under_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    script = TRITON_SCRIPT.format(tests=str(ROOT / "tests"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                          cwd=str(ROOT))
    assert done.returncode == 0, done.stderr[-3000:]
    worst = float(done.stdout.split("MAXERR")[-1])
    assert worst <= 1e-5
