"""Unlearning baselines: dense-neuron pruning against explicit weight surgery, SAE interventions
(error term kept: an empty edit changes nothing, bit for bit; negative clamping changes the hook
by exactly (f' - f) W_dec; the spliced variant costs its reconstruction error), and an end-to-end
run with SAEs trained by SAELens for a few steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import hand_bank, tiny_corpus, tiny_dense

from monet_interp.analyses.baselines import collect_activations, sae_quality, train_saes
from monet_interp.analyses.unlearning import Method, UnlearningError, run_unlearning, select_random
from monet_interp.stats import window_statistics
from monet_interp.units import NeuronUnits, SAEUnits, UnitError


pytestmark = pytest.mark.usefixtures("one_thread")


TOKENS = torch.randint(3, 48, (2, 10), generator=torch.Generator().manual_seed(0))


# ============================================================================================
# neurons
# ============================================================================================


def test_neuron_pruning_equals_weight_surgery():
    model = tiny_dense()
    units = NeuronUnits(model)
    chosen = select_random(units.n_units, 11, seed=2)
    with torch.no_grad():
        with units.removal(chosen):
            got = model(TOKENS)
        clean = model(TOKENS)
        saved = {layer: model.blocks[layer].mlp.down_proj.weight.clone() for layer in range(2)}
        try:
            for unit in chosen.tolist():
                layer, neuron = divmod(unit, units.width)
                model.blocks[layer].mlp.down_proj.weight[:, neuron] = 0.0
            want = model(TOKENS)
        finally:
            for layer, weight in saved.items():
                model.blocks[layer].mlp.down_proj.weight.copy_(weight)
    assert torch.allclose(got, want, atol=1e-6)
    assert (got - clean).abs().max() > 1e-4
    assert torch.equal(model(TOKENS), clean)  # nothing left attached
    assert list(units.describe(chosen[:2]).columns) == ["unit", "layer", "neuron"]


def test_neuron_statistics_match_cache():
    model = tiny_dense()
    units = NeuronUnits(model, layers=[1])
    windows = torch.randint(3, 48, (3, 9), generator=torch.Generator().manual_seed(1))
    stats = window_statistics(model, units, windows[:, :-1], batch_size=2)
    _, cache = model.run_with_cache(windows[:, :-1], names_filter="blocks.1.mlp.hook_post")
    act = cache["blocks.1.mlp.hook_post"].reshape(-1, units.width).double()
    assert torch.allclose(stats["mean"], act.mean(0))
    assert torch.allclose(stats["freq"], (act > 0).double().mean(0))
    with pytest.raises(UnitError, match="no hook"):
        NeuronUnits(model, hook_template="blocks.{layer}.mlp.hook_missing")


# ============================================================================================
# SAE interventions
# ============================================================================================


def test_sae_error_term_zero_edit_is_exact():
    model = tiny_dense()
    units = SAEUnits(hand_bank(model))
    with torch.no_grad():
        clean = model(TOKENS)
        with model.hooks(fwd_hooks=units.hooks(torch.arange(0))):  # hooks on, nothing edited
            assert torch.equal(model(TOKENS), clean)
        # every layer hooked with features that are never active: f' = f, still bit for bit
        dead = torch.tensor([0, units.width + 1])
        for layer in units.bank.layers:
            units.bank.saes[layer].b_enc[[0, 1]] = -1e6
        with units.removal(dead):
            assert torch.equal(model(TOKENS), clean)


def test_sae_negative_clamp_changes_hook_by_decoder_rows():
    model = tiny_dense()
    bank = hand_bank(model)
    units = SAEUnits(bank, clamp=-2.0)
    sae = bank.saes[1]
    features = torch.tensor([3, 7, 19])
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(4))
    out = units.intervention(1, features)(x, None)
    f = sae.encode(x)[..., features]
    new = torch.where(f > 0, -2.0 * bank.mean_active[1][features], f)
    assert torch.allclose(out - x, (new - f) @ sae.W_dec[features], atol=1e-6)
    assert (f > 0).any() and (out - x).abs().max() > 0
    zero = SAEUnits(bank, clamp=0.0).intervention(1, features)(x, None)  # zero-ablation
    assert torch.allclose(zero - x, -f @ sae.W_dec[features], atol=1e-6)
    spliced = SAEUnits(bank, mode="spliced").intervention(1, torch.zeros(0, dtype=torch.long))(x, None)
    assert torch.allclose(spliced, sae.decode(sae.encode(x)), atol=1e-6)  # the reconstruction replaces x
    with pytest.raises(UnitError):
        SAEUnits(bank, mode="replace")


def test_spliced_mode_costs_before_any_removal():
    model = tiny_dense()
    spliced = SAEUnits(hand_bank(model), mode="spliced")
    error = SAEUnits(hand_bank(model), mode="error")
    with torch.no_grad():
        clean = model(TOKENS)
        with spliced.removal(torch.zeros(0, dtype=torch.long)):
            assert (model(TOKENS) - clean).abs().max() > 1e-3
        with error.removal(torch.zeros(0, dtype=torch.long)):
            assert torch.equal(model(TOKENS), clean)


# ============================================================================================
# end to end with SAELens
# ============================================================================================


def test_baselines_end_to_end_with_saelens():
    model = tiny_dense()
    corpus = tiny_corpus(3, kind="code", bytes_per_token=3.0)
    acts = collect_activations(model, corpus, [0, 1], tokens_per_label=64, seq_len=16)
    assert acts[0].shape == (3 * 4 * 16, 16)
    bank = train_saes(model, corpus, tokens_per_label=96, seq_len=16, expansion=2, k=4, steps=12, batch_size=64)
    assert bank.layers == [0, 1] and bank.d_sae(0) == 32
    sae = bank.saes[0]
    assert type(sae).__module__.startswith("sae_lens")
    assert bank.info["trainer"].startswith("sae_lens.LanguageModelSAETrainingRunner")  # SAELens' own runner
    mu, fvu, l0 = sae_quality(sae, acts[0])
    assert 0 <= fvu < 1.5 and l0 == pytest.approx(4.0) and (mu >= 0).all()
    # the error-term intervention with a real SAELens SAE is exact at zero edit too
    units = SAEUnits(bank)
    with torch.no_grad():
        clean = model(TOKENS)
        with model.hooks(fwd_hooks=units.hooks(torch.arange(0))):
            assert torch.equal(model(TOKENS), clean)
    neurons = NeuronUnits(model)
    methods = [Method("neurons ratio", neurons, "ratio"), Method("neurons 2x", neurons, "2x", statistic="freq"),
               Method("neurons random", neurons, "random"),
               Method("SAE ratio", units, "ratio"), Method("SAE spliced ratio", SAEUnits(bank, mode="spliced"), "ratio"),
               Method("SAE spliced same", SAEUnits(bank, mode="spliced"), "same", match="SAE ratio")]
    result = run_unlearning(None, corpus, forget=["lab1"], methods=methods, seq_len=16, stat_tokens=64,
                            eval_forget_tokens=32, eval_tokens=32, curve_forget_tokens=32, curve_retain_tokens=16,
                            fractions=(0.05, 0.2), stop_after_budget=None, refine_steps=0, byte_lengths=None)
    s = result.summary.set_index("method")
    assert list(s.index) == [m.name for m in methods]
    # a random control copies the count of the 2x rule on the same units
    assert s.loc["neurons random", "n_removed"] == s.loc["neurons 2x", "n_removed"]
    assert result.methods[2]["match"] == "neurons 2x"
    assert s.loc["SAE ratio", "n_units"] == 2 * 32 and s.loc["neurons ratio", "n_units"] == 2 * 32
    assert np.isfinite(s[["d_target_top1", "d_others_top1", "d_target_bpb"]].to_numpy()).all()
    # spliced: measured against the clean model, so splicing itself shows up on every label
    spliced_curve = result.curves[result.curves["method"] == "SAE spliced ratio"]
    assert len(spliced_curve) == 2
    # "same": the features the error-kept method removed, spliced instead (no curve of its own)
    assert torch.equal(result.selections[("SAE spliced same", "lab1")], result.selections[("SAE ratio", "lab1")])
    assert not (result.curves["method"] == "SAE spliced same").any()
    iterator = train_saes(model, corpus, layers=[1], tokens_per_label=96, seq_len=16, expansion=2, k=4, steps=12,
                          batch_size=64, trainer="iterator")
    assert iterator.info["trainer"].startswith("sae_lens.SAETrainer") and iterator.d_sae(1) == 32
    with pytest.raises(ValueError, match="trainer"):
        train_saes(model, corpus, trainer="handwritten")
    with pytest.raises(UnlearningError, match="differ"):
        run_unlearning(None, corpus, methods=[Method("n", NeuronUnits(model, layers=[1]), "2x"),
                                              Method("s", units, "same", match="n")], seq_len=16)
    assert "SAE spliced ratio" in result.html_section(include_plotlyjs=False)
