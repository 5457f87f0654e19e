"""Steering: exactness of each intervention (expert set/add, top-1 replacement, DiffMean / SAE
vectors), hooks active at every generation step, the metrics on planted inputs, and a tiny
end-to-end run (tables, HTML, CLI)."""

from __future__ import annotations

import argparse
import contextlib

import numpy as np
import pytest
import torch
from expansion_reference import expert_outputs
from tiny_models import cast_keeping_router_stats, steering_cfg

from monet_interp import HookedMONET, MonetTokenizer
from monet_interp.editing.interventions import AddVector, ExpertBoost, Top1Replace, replace_top1
from monet_interp.editing.router_steering import RouterLogitSteer, force_router_logits
from monet_interp.analyses.steering import (
    LabelStats,
    SteeringConfig,
    SteeringResult,
    collect_label_stats,
    diffmean_vectors,
    is_top1,
    run_steering,
    select_monet_experts,
    select_sae_features,
    select_top1_targets,
    text_windows,
)
from monet_interp.analyses.steering.metrics import (
    NgramNaiveBayes,
    characteristic_tokens,
    concept_score,
    distinct_n,
    fluency_score,
    harmonic_mean,
    mean_token_kl,
    normalise_concept,
    set_logprob,
    steerability,
)

DECOMPOSITIONS = ("vertical", "horizontal")


# ---------------------------------------------------------------------------- fixtures
def tiny_model(decompose: str = "vertical", routing: str = "threshold", seed: int = 0, experts: int = 8,
               heads: int = 2, tokenizer: MonetTokenizer | None = None) -> HookedMONET:
    model = HookedMONET(steering_cfg(decompose, routing, experts, heads), tokenizer)
    model.init_weights(seed)
    return cast_keeping_router_stats(model, torch.float64)


@pytest.fixture
def toy_tokenizer(tmp_path):
    from conftest import toy_tokenizer_json

    return MonetTokenizer.from_file(toy_tokenizer_json(tmp_path / "tokenizer.json"))


class _Capture:
    """Records the input of a layer's MoE and the cached hook outputs of one forward."""

    def __init__(self, model: HookedMONET, layer: int):
        self.model, self.layer = model, layer

    def run(self, tokens: torch.Tensor, ctx=None) -> dict[str, torch.Tensor]:
        store: dict[str, torch.Tensor] = {}
        moe = self.model.blocks[self.layer].moe
        handle = moe.register_forward_pre_hook(lambda mod, args: store.__setitem__("moe_in", args[0].detach()))
        names = [f"blocks.{self.layer}.hook_mlp_out", f"blocks.{self.layer}.moe.hook_g_row",
                 f"blocks.{self.layer}.moe.hook_g_col"]
        try:
            with ctx or contextlib.nullcontext():
                _, cache = self.model.run_with_cache(tokens, names_filter=lambda n: n in names)
        finally:
            handle.remove()
        store["mlp_out"] = cache[names[0]]
        store["g_row"], store["g_col"] = cache[names[1]], cache[names[2]]
        return store


TOKENS = torch.tensor([[1, 5, 9, 14, 3, 22, 7], [1, 30, 2, 8, 8, 40, 11]])


# ---------------------------------------------------------------------------- expert boosting
@pytest.mark.parametrize("decompose", DECOMPOSITIONS)
@pytest.mark.parametrize("op", ["set", "add"])
def test_expert_set_add_changes_output_by_weight_times_expert(decompose, op):
    model = tiny_model(decompose)
    layer, (i, j), w = 2, (3, 5), 0.7  # layer 2 is the router layer of group 1: earlier layers untouched
    cap = _Capture(model, layer)
    base = cap.run(TOKENS)
    boost = ExpertBoost([(1, i, j)], op=op)
    steered = cap.run(TOKENS, boost.context(model, w))
    assert torch.equal(base["moe_in"], steered["moe_in"])
    w_old = torch.einsum("bth,bth->bt", base["g_row"][..., i], base["g_col"][..., j])
    e_ij = expert_outputs(model.blocks[layer].moe, base["moe_in"].reshape(-1, 16))[:, i, j].reshape(2, 7, 16)
    delta = (w - w_old) if op == "set" else torch.full_like(w_old, w)
    expected = base["mlp_out"] + delta[..., None] * e_ij
    torch.testing.assert_close(steered["mlp_out"], expected, rtol=1e-6, atol=1e-6)
    assert w_old.min() < w  # somewhere the expert really was switched on / raised


def test_expert_boost_per_head_and_layer_scope():
    model = tiny_model("vertical")
    layer, (i, j), w = 3, (1, 6), 0.4
    cap = _Capture(model, layer)
    base = cap.run(TOKENS)
    boost = ExpertBoost([(1, i, j)], op="set", heads=[1], layers=[layer])
    assert len(boost.edits(model.cfg, w)) == 1 and boost.edits(model.cfg, w)[0].layer == layer
    steered = cap.run(TOKENS, boost.context(model, w))
    w_old = base["g_row"][..., 1, i] * base["g_col"][..., 1, j]
    e_ij = expert_outputs(model.blocks[layer].moe, base["moe_in"].reshape(-1, 16))[:, i, j].reshape(2, 7, 16)
    torch.testing.assert_close(steered["mlp_out"], base["mlp_out"] + (w - w_old)[..., None] * e_ij,
                               rtol=1e-6, atol=1e-6)
    # alpha = 0 attaches nothing, even for "set"
    assert isinstance(boost.context(model, 0.0), contextlib.nullcontext)


def test_boost_op_and_top1_gate_are_checked():
    with pytest.raises(ValueError, match="expert steering uses op 'add' or 'set', got 'prune'"):
        ExpertBoost([(0, 1, 2)], op="prune")
    with pytest.raises(ValueError, match="gate must be 'keep' or 'set', got 'add'"):
        Top1Replace({0: {0: (1, 2)}}, gate="add")


# ---------------------------------------------------------------------------- top-1 replacement
def test_replace_top1_pure_function():
    g = torch.zeros(2, 3, 4, 5)
    g[..., 0, 1] = 0.6
    g[..., 1, 4] = 0.3
    g[..., 2, 2] = 0.9
    out = replace_top1(g, {1: 0}, scale=2.0)
    assert torch.equal(out[..., 0, :], g[..., 0, :]) and torch.equal(out[..., 2:, :], g[..., 2:, :])
    assert torch.allclose(out[..., 1, 0], torch.full((2, 3), 0.6)) and out[..., 1, 1:].abs().sum() == 0
    assert g[..., 1, 4].eq(0.3).all()  # input untouched
    out = replace_top1(g, {2: 3}, value=0.25)
    assert out[..., 2, 3].eq(0.25).all() and (out[..., 2, :] != 0).sum() == 6


@pytest.mark.parametrize("decompose,gate,alpha", [("vertical", "keep", 1.0), ("horizontal", "keep", 2.5),
                                                  ("vertical", "set", 0.8)])
def test_top1_replacement_changes_only_the_chosen_head(decompose, gate, alpha):
    model = tiny_model(decompose, routing="top1", seed=3)
    layer, head, (ti, tj) = 2, 1, (6, 2)
    cap = _Capture(model, layer)
    base = cap.run(TOKENS)
    assert ((base["g_row"] > 0).sum(-1) == 1).all() and ((base["g_col"] > 0).sum(-1) == 1).all()
    steered = cap.run(TOKENS, Top1Replace({1: {head: (ti, tj)}}, gate=gate).context(model, alpha))
    assert torch.equal(base["moe_in"], steered["moe_in"])
    for other in range(model.cfg.moe_heads):
        if other != head:  # every other head's factors are identical
            assert torch.equal(steered["g_row"][..., other, :], base["g_row"][..., other, :])
            assert torch.equal(steered["g_col"][..., other, :], base["g_col"][..., other, :])
    row, col = steered["g_row"][..., head, :], steered["g_col"][..., head, :]
    assert ((row != 0).sum(-1) == 1).all() and (row[..., ti] != 0).all()
    assert ((col != 0).sum(-1) == 1).all() and (col[..., tj] != 0).all()
    gate_old = base["g_row"][..., head, :].sum(-1) * base["g_col"][..., head, :].sum(-1)
    w_new = row[..., ti] * col[..., tj]
    torch.testing.assert_close(w_new, alpha * gate_old if gate == "keep" else torch.full_like(w_new, alpha))
    # the MoE output moves by w_new E_target - w_old E_old for that head only
    i_old = base["g_row"][..., head, :].argmax(-1)
    j_old = base["g_col"][..., head, :].argmax(-1)
    experts = expert_outputs(model.blocks[layer].moe, base["moe_in"].reshape(-1, 16)).reshape(2, 7, 8, 8, 16)
    e_old = experts[torch.arange(2)[:, None], torch.arange(7)[None, :], i_old, j_old]
    expected = base["mlp_out"] + w_new[..., None] * experts[:, :, ti, tj] - gate_old[..., None] * e_old
    torch.testing.assert_close(steered["mlp_out"], expected, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------- SteerMoE (router logits)
@pytest.mark.parametrize("routing", ["threshold", "topk", "top1"])
def test_router_logit_steering_routes_through_the_router(routing):
    """Forcing logits before routing equals running the router's own rule on the forced logits
    (activate: the expert is always kept and gets the largest factor; deactivate: its factor is 0),
    on both layers of the group, and leaves the other group and heads alone."""
    model = tiny_model("vertical", routing=routing, seed=5)
    group, head, (ti, tj) = 1, 1, (3, 6)
    router_layer = model.cfg.router_layers[group]
    router = model.blocks[router_layer].moe.router
    caps = {layer: _Capture(model, layer) for layer in (0, router_layer, router_layer + 1)}
    base = {layer: cap.run(TOKENS) for layer, cap in caps.items()}
    for mode, alpha in [("activate", 1.5), ("deactivate", 1.0)]:
        iv = RouterLogitSteer({group: {head: (ti, tj)}}, mode)
        steered = {layer: cap.run(TOKENS, iv.context(model, alpha)) for layer, cap in caps.items()}
        assert torch.equal(steered[0]["g_row"], base[0]["g_row"])  # group 0 untouched
        moe_in = steered[router_layer]["moe_in"]
        rows, cols = router.logits(moe_in)
        rows = force_router_logits(rows, {head: [ti]}, mode, alpha, router, "row")
        cols = force_router_logits(cols, {head: [tj]}, mode, alpha, router, "col")
        want = router.route_from_logits(rows, cols)
        for layer in (router_layer, router_layer + 1):  # the whole group routes the forced way
            torch.testing.assert_close(steered[layer]["g_row"], want.g_row.to(torch.float64))
            torch.testing.assert_close(steered[layer]["g_col"], want.g_col.to(torch.float64))
        g_row, g_col = steered[router_layer]["g_row"], steered[router_layer]["g_col"]
        if mode == "activate":
            assert (g_row[..., head, ti] > 0).all() and (g_col[..., head, tj] > 0).all()
            assert torch.equal(g_row[..., head, :].argmax(-1), torch.full(g_row.shape[:2], ti))
        else:
            assert (g_row[..., head, ti] == 0).all() and (g_col[..., head, tj] == 0).all()
        # the logits of the other heads are not touched (their kept sets match the unsteered ones)
        assert torch.equal(g_row[..., 0, :] > 0, base[router_layer]["g_row"][..., 0, :] > 0)
    assert RouterLogitSteer({group: {head: (ti, tj)}}).context(model, 0.0).__class__ is contextlib.nullcontext
    with pytest.raises(ValueError, match="routing group 5"):
        RouterLogitSteer({5: {0: (1, 1)}}).hooks(model, 1.0)


# ---------------------------------------------------------------------------- vectors (DiffMean, SAE)
class _ToySAE:
    """Minimal SAE interface: W_enc [d, F], b_enc [F], W_dec [F, d], b_dec [d] (no encode method)."""

    def __init__(self, d: int, n: int, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.W_enc = torch.randn(d, n, generator=gen, dtype=torch.float64)
        self.b_enc = torch.randn(n, generator=gen, dtype=torch.float64) * 0.1
        self.W_dec = torch.randn(n, d, generator=gen, dtype=torch.float64)
        self.b_dec = torch.zeros(d, dtype=torch.float64)


def _windows() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    return {"a": torch.randint(3, 20, (3, 9), generator=gen), "b": torch.randint(20, 40, (3, 9), generator=gen),
            "c": torch.randint(40, 61, (3, 9), generator=gen)}


def test_diffmean_vector_is_mean_difference_and_hook_adds_it_exactly():
    model = tiny_model("vertical")
    windows = _windows()
    stats = collect_label_stats(model, windows, batch_size=2)
    _, cache = model.run_with_cache(torch.cat(list(windows.values())), names_filter=lambda n: "hook_mlp_out" in n)
    layer = 1
    out = cache[f"blocks.{layer}.hook_mlp_out"]
    means = [out[3 * k:3 * k + 3].mean((0, 1)) for k in range(3)]
    vecs = diffmean_vectors(stats, "a", [layer], "mlp_out", ["b", "c"])
    torch.testing.assert_close(vecs[f"blocks.{layer}.hook_mlp_out"].double(),
                               means[0] - (means[1] + means[2]) / 2, rtol=1e-5, atol=1e-6)
    cap = _Capture(model, layer)
    base = cap.run(TOKENS)
    v = vecs[f"blocks.{layer}.hook_mlp_out"].double()
    steered = cap.run(TOKENS, AddVector(vecs, method="diffmean").context(model, 1.5))
    torch.testing.assert_close(steered["mlp_out"], base["mlp_out"] + 1.5 * v, rtol=1e-12, atol=1e-12)


def test_sae_features_add_decoder_direction_with_error_term_kept():
    model = tiny_model("horizontal")
    layer = 2
    sae = _ToySAE(16, 12)
    stats = collect_label_stats(model, _windows(), saes={layer: sae})
    vecs, feats = select_sae_features(stats, {layer: sae}, "b", k=2)
    assert 1 <= len(feats) <= 2
    expected_v = sum(f["mean_active"] * sae.W_dec[f["feature"]] for f in feats)
    v = vecs[f"blocks.{layer}.hook_mlp_out"].double()
    torch.testing.assert_close(v, expected_v, rtol=1e-5, atol=1e-6)
    scaled, _ = select_sae_features(stats, {layer: sae}, "b", k=2, scale_to={f"blocks.{layer}.hook_mlp_out": 3.0})
    torch.testing.assert_close(scaled[f"blocks.{layer}.hook_mlp_out"].double(), 3.0 * v / v.norm(),
                               rtol=1e-5, atol=1e-6)
    cap = _Capture(model, layer)
    base = cap.run(TOKENS)
    steered = cap.run(TOKENS, AddVector(vecs, method="sae").context(model, 0.5))
    torch.testing.assert_close(steered["mlp_out"], base["mlp_out"] + 0.5 * v, rtol=1e-12, atol=1e-12)
    # = Dec(f') + (x - Dec(f)) with f' = f + 0.5 a_k on the chosen features (error term kept)
    x = base["mlp_out"]
    f = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    f2 = f.clone()
    for feat in feats:
        f2[..., feat["feature"]] += 0.5 * feat["mean_active"]
    spliced = (f2 @ sae.W_dec + sae.b_dec) + (x - (f @ sae.W_dec + sae.b_dec))
    torch.testing.assert_close(steered["mlp_out"], spliced, rtol=1e-6, atol=1e-6)


def test_hooks_and_edits_apply_at_every_generation_step_with_kv_cache():
    model = tiny_model("vertical", routing="top1", seed=1)
    prompts = TOKENS[:, :4]
    windows = _windows()
    stats = collect_label_stats(model, windows)
    targets, _ = select_top1_targets(stats, "a", n_heads=1)
    experts, _ = select_monet_experts(stats, "a", k=2)
    assert experts and all(t for t in targets.values())
    ivs = [AddVector(diffmean_vectors(stats, "a", [0, 3]), method="diffmean"), Top1Replace(targets),
           ExpertBoost(experts, "add"), RouterLogitSteer(targets)]
    plain = model.generate(prompts, max_new_tokens=4, do_sample=False, stop_at_eos=False, return_type="tokens")
    for iv in ivs:
        with iv.context(model, 3.0):
            out = model.generate(prompts, max_new_tokens=4, do_sample=False, stop_at_eos=False, return_type="tokens")
            logits = model(out)  # full recomputation, no cache
        greedy = logits[:, prompts.shape[1] - 1:-1].argmax(-1)
        assert torch.equal(greedy, out[:, prompts.shape[1]:]), iv.method
        assert not torch.equal(out, plain), iv.method  # the intervention did something


def test_selection_prefers_skewed_experts():
    labels = ["a", "b"]
    routing = torch.full((2, 1, 2, 4, 4), 0.01, dtype=torch.float64)
    routing[0, 0, 0, 1, 2] = 0.5  # head 0 routes (1, 2) on label a only
    routing[:, 0, 1, 3, 3] = 0.6  # generic expert on both labels
    routing[0, 0, 1, 0, 0] = 0.2  # head 1: mildly skewed
    stats = LabelStats(labels, [10, 10], torch.zeros(2, 2, 4), torch.zeros(2, 2, 4), routing.float())
    experts, skews = select_monet_experts(stats, "a", k=2)
    assert experts[0] == (0, 1, 2) and experts[1] == (0, 0, 0) and skews[0] > skews[1] > 1
    routing[:, 0, :, 2, 2] = 0.0  # rare expert with a large ratio: "skew" ranking takes it, "usage" not
    routing[0, 0, 0, 2, 2] = 0.03
    stats = LabelStats(labels, [10, 10], torch.zeros(2, 2, 4), torch.zeros(2, 2, 4), routing.float())
    assert (0, 2, 2) not in select_monet_experts(stats, "a", k=2)[0]
    assert select_monet_experts(stats, "a", k=1, rank="skew", min_score=0.0)[0] == [(0, 2, 2)]
    targets, scores = select_top1_targets(stats, "a", n_heads=1)
    assert targets == {0: {0: (1, 2)}}


# ---------------------------------------------------------------------------- metrics
def test_classifier_on_separable_toy_text():
    train = ["def foo(self): return self.x"] * 3 + ["the cat sat on the mat with a hat"] * 3
    labels = ["py"] * 3 + ["en"] * 3
    clf = NgramNaiveBayes(ngram_range=(1, 3)).fit(train, labels)
    preds = clf.predict(["def bar(self): return 1", "a dog sat on a hat"])
    assert preds == ["py", "en"]
    assert clf.accuracy(["self.y = self.x", "the mat"], ["py", "en"]) == 1.0
    proba = clf.predict_proba(["def self"], per_gram_temperature=1.0)
    assert proba.shape == (1, 2) and np.isclose(proba.sum(), 1) and proba[0, clf.classes_.index("py")] > 0.5
    assert concept_score(preds, "py") == 0.5


def test_fluency_distinct_kl_and_logprob_planted():
    assert fluency_score(2.0, 2.0) == 1.0
    assert fluency_score(1.0, 2.0) == 1.0  # more likely than the unsteered text: no penalty
    assert np.isclose(fluency_score(3.0, 2.0), np.exp(-1.0))
    assert distinct_n([1, 2, 1, 2, 1], 2) == 0.5 and distinct_n([1, 2, 3], 2) == 1.0
    logits = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0))
    assert mean_token_kl(logits, logits) == 0.0
    assert mean_token_kl(logits, logits + 3.0) < 1e-12  # a constant shift is the same distribution
    assert mean_token_kl(logits, logits.flip(-1)) > 0
    lp = set_logprob(logits, [0, 3])
    torch.testing.assert_close(lp.exp(), logits.softmax(-1)[..., [0, 3]].sum(-1))
    toks = {"t": [5, 5, 5, 6, 6, 9] * 3, "o": [6, 7, 7, 9, 9, 9] * 3}
    assert characteristic_tokens(toks, "t", k=1, min_count=2) == [5]


def test_kl_is_zero_at_alpha_zero():
    model = tiny_model("vertical")
    stats = collect_label_stats(model, _windows())
    for iv in (AddVector(diffmean_vectors(stats, "a", [1]), method="diffmean"),
               ExpertBoost(select_monet_experts(stats, "a", k=2)[0], "set")):
        with iv.context(model, 0.0):
            steered = model(TOKENS)
        assert mean_token_kl(model(TOKENS), steered) == 0.0


def test_harmonic_mean_and_normalisation_hand_cases():
    assert np.isclose(harmonic_mean(0.5, 1.0), 2 * 0.5 * 1.0 / 1.5)
    assert harmonic_mean(0.0, 1.0) == 0.0  # strict
    assert np.isclose(harmonic_mean(0.2, 0.5, 1.0), 3 / (5 + 2 + 1))
    out = harmonic_mean(np.array([0.5, 0.0, np.nan]), np.array([0.5, 0.9, 0.5]))
    assert np.isclose(out[0], 0.5) and out[1] == 0 and np.isnan(out[2])
    np.testing.assert_allclose(normalise_concept([0.5, 0.1, 1.0], [0.0, 0.2, 1.0]), [0.5, 0.0, 0.0])
    np.testing.assert_allclose(normalise_concept(0.6, 0.2), 0.5)


def test_steerability_slope_on_planted_line():
    alphas = [0, 1, 2, 4]
    y = np.array([[2 * a + 1 for a in alphas], [2 * a - 3 for a in alphas], [-0.5 * a for a in alphas]])
    st = steerability(alphas, y)
    np.testing.assert_allclose(st["slopes"], [2, 2, -0.5])
    assert np.isclose(st["slope"], 3.5 / 3) and np.isclose(st["wrong_way"], 1 / 3)
    assert np.isclose(st["mean_slope"], st["slope"])
    with pytest.raises(ValueError):
        steerability([1, 1], [[0, 1]])


# ---------------------------------------------------------------------------- end to end
class _FakeCorpus:
    labels = ["alpha", "beta", "gamma"]
    words = {"alpha": "def run(self): return self.value ", "beta": "int main(void) ( return x = y ) ",
             "gamma": "the quick brown fox jumps over the lazy dog. "}

    def label_kind(self, label: str) -> str:
        return "code"

    def texts(self, label: str, split: str = "test", limit: int | None = None) -> list[str]:
        docs = [(self.words[label] * 12)[k:] for k in range(0, 12, 3)]
        return docs[:limit]


def test_run_steering_end_to_end(toy_tokenizer, tmp_path):
    model = tiny_model("horizontal", routing="top1", tokenizer=toy_tokenizer, seed=2).to(torch.float32)
    assert is_top1(model) and not is_top1(tiny_model("vertical"))
    sae = _ToySAE(16, 10)
    sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec = (t.float() for t in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec))
    res = run_steering({"top1": model}, _FakeCorpus(), concepts=["alpha"],
                       methods=["monet", "top1", "sae", "diffmean", "steermoe"], saes={"top1": {2: sae}},
                       config=SteeringConfig(alphas=(0, 2), n_prompts=2, prompt_tokens=6, max_new_tokens=3,
                                             prompt_labels=("beta", "gamma"),
                                             stat_windows=2, stat_tokens=12, kl_windows=2, kl_tokens=10,
                                             classifier_chunks=4, classifier_chars=60, classifier_eval_chunks=2,
                                             char_tokens=4, sae_layers=(2,), train_saes=False),
                       verbose=False)
    assert set(res.summary["method"]) == {"monet", "top1", "sae", "diffmean", "steermoe"}
    assert set(res.curves["half"]) == {"select", "report", "all"}
    base = res.generations[res.generations["alpha"] == 0]
    assert (base["kl"] == 0).all() and (base["fluency"] == 1).all() and (base["dlogp"] == 0).all()
    assert res.summary["harmonic"].between(0, 1).all()
    assert res.table("harmonic").shape == (5, 1)
    forced = res.selections["top1"]["alpha"]["steermoe"]
    assert forced["method"] == "steermoe" and len(forced["targets"]) == 2 * model.cfg.moe_heads  # every head
    assert list(res.generations["source"].unique()) == ["beta", "gamma"]
    fragment = res.html_section()
    assert fragment.startswith('<section id="steering">') and fragment.endswith("</section>")
    assert "<html" not in fragment and "Example generations" in fragment
    out = res.save(tmp_path / "steer", html_page=False)
    assert (out / "summary.csv").is_file() and (out / "selections.json").is_file()
    back = SteeringResult.load(out)
    assert back.summary[["concept_score", "harmonic", "kl"]].equals(res.summary[["concept_score", "harmonic", "kl"]])
    assert back.selections.keys() == res.selections.keys() and back.classifier_accuracy == res.classifier_accuracy
    assert back.markdown() == res.markdown()
    with pytest.raises(FileNotFoundError, match="not a saved steering run"):
        SteeringResult.load(tmp_path)


def test_markdown_tables_on_planted_summary():
    import pandas as pd

    rows = [("m1", "monet", "py", 0.8, 0.5, 0.1), ("m1", "diffmean", "py", 0.6, 0.9, 0.2),
            ("m1", "monet", "c", 0.0, 0.7, 0.3), ("m1", "diffmean", "c", 0.4, 0.4, 0.4),
            ("m2", "monet", "py", 0.2, 0.2, 0.5)]
    summary = pd.DataFrame([{"model": m, "method": meth, "concept": c, "concept_score": cs, "fluency": fl,
                             "harmonic": harmonic_mean(cs, fl), "kl": kl, "wrong_way": 0.5,
                             "dlogp": 2 * kl, "slope": -kl}
                            for m, meth, c, cs, fl, kl in rows])
    curves = pd.DataFrame([{"model": m, "method": meth, "concept": c, "alpha": a, "half": half,
                            "concept_score": cs * a, "fluency": fl}
                           for m, meth, c, cs, fl, _ in rows for a in (0.0, 2.0) for half in ("all", "select")])
    md = SteeringResult(pd.DataFrame(), curves, summary, {}, 1.0, {}).markdown(digits=2)
    lines = md.splitlines()
    # overview: m1/monet means over its two concepts (harmonic(.8, .5) = .615, harmonic(0, .7) = 0);
    # diffmean wins both m1 concepts (harmonic(.6, .9) = .72, .4)
    assert "| m1 / monet | 2 | 0.40 | 0.40 | 0.60 | 0.31 | 0.20 | -0.20 | 50% | 0 |" in lines
    assert "| m1 / diffmean | 2 | 0.50 | 0.60 | 0.65 | 0.56 | 0.30 | -0.30 | 50% | 2 |" in lines
    assert "| m2 / monet | 1 | 0.20 | 1.00 | 0.20 | 0.20 | 0.50 | -0.50 | 50% | 1 |" in lines
    # per concept: the best method of each model in bold; m2 has no "c" cell
    assert "| py | 0.62 | **0.72** | **0.20** |" in lines
    assert "| c | 0.00 | **0.40** | - |" in lines
    assert "| c | 0.00 / 0.70 / 0.00 / 0.30 | 0.40 / 0.40 / 0.40 / 0.40 | - |" in lines
    # curves: "all" half only, mean over concepts: m1/monet at alpha 2 = (1.6 + 0) / 2 and fluency .6
    assert "| m1 / monet | 0.00 / 0.60 | 0.80 / 0.60 |" in lines
    # runs over different models combine into the same tables; mismatched runs are refused
    parts = [SteeringResult(pd.DataFrame(), curves[curves["model"] == m], summary[summary["model"] == m], {}, 1.0, {})
             for m in ("m1", "m2")]
    assert SteeringResult.concat(parts).markdown(digits=2) == md
    with pytest.raises(ValueError, match="more than one run"):
        SteeringResult.concat([parts[0], parts[0]])
    with pytest.raises(ValueError, match="different classifiers"):
        SteeringResult.concat([parts[0], SteeringResult(pd.DataFrame(), curves, summary, {}, 0.5, {})])


def test_text_windows_exact_length():
    enc = lambda s: [ord(c) % 50 + 3 for c in s]  # noqa: E731
    ws = text_windows(["abc\ndef ghi\n" * 20, "xyz uvw\n" * 30], 5, 7, enc, seed=0)
    assert len(ws) == 5 and all(len(w) == 7 for w in ws)


def test_cli_registers_and_validates():
    from monet_interp.analyses.cli import steering as steering_cli

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    steering_cli.register(sub)
    args = parser.parse_args(["steer", "run", "--models", "monet-vd-tiny", "--corpus", "data/corpus",
                              "--concepts", "python", "c", "--alphas", "0", "1", "2", "--n-prompts", "4"])
    assert args.func is not None and args.alphas == [0.0, 1.0, 2.0] and args.concepts == ["python", "c"]
    cfg = steering_cli.config_from_args(args)
    assert cfg.n_prompts == 4 and cfg.alphas == (0.0, 1.0, 2.0)
    args = parser.parse_args(["steer", "generate", "--model", "monet-vd-tiny", "--corpus", "data/corpus",
                              "--concept", "c", "--method", "steermoe", "--prompt", "x", "--steermoe-mode",
                              "deactivate", "--steermoe-groups", "1", "--steermoe-heads", "2"])
    cfg = steering_cli.config_from_args(args)
    assert cfg.steermoe_mode == "deactivate" and cfg.steermoe_groups == (1,) and cfg.steermoe_heads == 2
    assert "steermoe" in parser.parse_args(["steer", "run", "--models", "m", "--corpus", "c"]).methods
    with pytest.raises(ValueError, match="steermoe_mode"):
        SteeringConfig(steermoe_mode="boost")
