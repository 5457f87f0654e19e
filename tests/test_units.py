"""The core Unit protocol (monet_interp.units), the per-label statistics pass
(monet_interp.stats.label_statistics) and the corpus opener / in-memory corpus (monet_interp.data):
scaling contexts against the edit API and against explicit hooks, several unit sets in one pass
equal each alone, activations agree with accumulated sums, and every form open_corpus accepts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import hand_bank, tiny_corpus, tiny_dense, tiny_model

from monet_interp.data import CorpusError, CorpusSpecError, MemoryCorpus, open_corpus
from monet_interp.editing import ExpertEdit
from monet_interp.stats import label_statistics, window_statistics
from monet_interp.units import ExpertUnits, HookUnits, NeuronUnits, SAEUnits, UnitError, monet_experts

TOKENS = torch.randint(3, 48, (2, 9), generator=torch.Generator().manual_seed(7))


pytestmark = pytest.mark.usefixtures("one_thread")


def test_expert_scaling_is_the_scale_edit():
    model = tiny_model()
    units = ExpertUnits(model)
    chosen = torch.tensor([1, 40])
    with torch.no_grad():
        with units.scaling(chosen, 0.5):
            got = model(TOKENS)
        E = model.cfg.moe_experts
        edits = [ExpertEdit(1 // E, 1 % E, "scale", 0.5, group=0), ExpertEdit((40 - E * E) // E, (40 - E * E) % E,
                                                                              "scale", 0.5, group=1)]
        with model.edit_experts(edits):
            want = model(TOKENS)
    assert torch.equal(got, want)


def test_neuron_scaling_and_removal_match_hooks():
    model = tiny_dense()
    units = NeuronUnits(model, layers=[1])
    idx = torch.tensor([2, 5])

    def scale(act, hook, factor):
        act = act.clone()
        act[..., idx] *= factor
        return act

    with torch.no_grad():
        clean = model(TOKENS)
        with units.scaling(idx, 3.0):
            got = model(TOKENS)
        with model.hooks(fwd_hooks=[("blocks.1.mlp.hook_post", lambda a, hook: scale(a, hook, 3.0))]):
            want = model(TOKENS)
        assert torch.allclose(got, want) and not torch.allclose(got, clean)
        hook_units = HookUnits("blocks.1.mlp.hook_post", model.cfg.d_mlp, model=model)
        with hook_units.removal(idx), torch.no_grad():
            removed = model(TOKENS)
        with units.removal(idx):
            assert torch.equal(model(TOKENS), removed)
    with pytest.raises(NotImplementedError):
        HookUnits("blocks.1.hook_mlp_out", 16, transform=lambda x: x).scaling(idx, 2.0)


def test_label_statistics_shares_the_pass_and_matches_activations():
    model = tiny_dense()
    neurons = NeuronUnits(model)
    sae = SAEUnits(hand_bank(model))
    windows = {"a": TOKENS, "b": TOKENS.flip(0)[:, :7]}
    together = label_statistics(model, [neurons, sae], windows, batch_size=1)
    for units, stats in zip((neurons, sae), together):
        alone = label_statistics(model, units, windows, batch_size=1)
        assert torch.equal(alone.mean, stats.mean) and torch.equal(alone.freq, stats.freq)
        assert stats.labels == ["a", "b"] and stats.tokens == [18, 14]
    _, cache = model.run_with_cache(TOKENS)
    acts = sae.activations(dict(cache.items())).reshape(-1, sae.n_units).double()
    assert torch.allclose(together[1].mean[0], acts.mean(0))
    assert torch.allclose(together[1].freq[0], (acts > 0).double().mean(0))
    fired = (acts > 0).double()
    assert torch.allclose(together[1].active_mean[0], (acts * fired).sum(0) / fired.sum(0).clamp_min(1))


def test_expert_activations_agree_with_sparse_accumulation():
    model = tiny_model()
    for units in (ExpertUnits(model), ExpertUnits(model, heads="per-head"), monet_experts(model.cfg, 1, [(3, 4), 7])):
        stats = window_statistics(model, units, TOKENS)
        _, cache = model.run_with_cache(TOKENS, names_filter=lambda n: "hook_g_" in n)
        acts = units.activations(dict(cache.items())).reshape(-1, units.n_units).double()
        assert torch.allclose(stats["mean"], acts.mean(0), atol=1e-6)
        assert torch.allclose(stats["freq"], (acts > 0).double().mean(0))
    sub = monet_experts(model.cfg, 1, [(3, 4), 7])
    assert sub.unit_names() == ["g1:(3,4)", "g1:(1,1)"] and sub.stats_metadata() == {"n_experts": 6, "group": 1}
    with pytest.raises(UnitError, match="expert ids"):
        monet_experts(model.cfg, 0, [36])


def test_memory_corpus_reads_like_a_corpus():
    streams = tiny_corpus()
    assert streams.documents("lab0", "train")[0].dtype == np.int64 and streams.stats("lab0", "train")["docs"] == 0
    assert len(streams.tokens("lab1", "nosplit")) == 0 and streams.labels_of_kind("code") == ["lab0", "lab2"]
    docs = MemoryCorpus.from_documents({"b": [[1, 5, 2]], "a": [[1, 6, 7, 2], [1, 2]]}, kinds={"a": "code"})
    assert docs.labels == ["b", "a"] and docs.splits == ("all",)
    assert [len(d) for d in docs.documents("a", "val")] == [4, 2] and docs.stats("a", "x") == {
        "docs": 2, "tokens": 6, "bytes": 6}
    assert docs.tokens("a").tolist() == [1, 6, 7, 2, 1, 2] and docs.label_kind("b") == "natural"
    with pytest.raises(KeyError, match="not in this corpus"):
        docs.documents("c")
    with pytest.raises(KeyError, match="built from token ids"):
        docs.texts("a")


def test_open_corpus_accepts_every_form(tmp_path):
    model = tiny_model()
    corpus = tiny_corpus()
    assert open_corpus(corpus) is corpus
    with pytest.raises(CorpusError, match="no manifest.json"):
        open_corpus(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_corpus(tmp_path / "missing", model)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusSpecError, match="neither a built corpus"):
        open_corpus(tmp_path / "empty", model)
    with pytest.raises(CorpusSpecError, match="needs a model"):
        open_corpus({"a": ["text"]})
    with pytest.raises(CorpusSpecError, match="no tokenizer"):
        open_corpus({"a": ["text"]}, model)  # the tiny model has no tokenizer
    from monet_interp import HookedMONET

    vd = HookedMONET.from_pretrained("monet-vd-tiny")
    (tmp_path / "texts" / "python").mkdir(parents=True)
    (tmp_path / "texts" / "python" / "b.txt").write_text("import os\n")
    (tmp_path / "texts" / "python" / "a.txt").write_text("def f(): pass\n")
    folder = open_corpus(tmp_path / "texts", vd)
    assert folder.labels == ["python"] and folder.keys == {"python": ["a.txt", "b.txt"]}
    assert folder.texts("python") == ["def f(): pass\n", "import os\n"]
    doc = folder.documents("python", "all")[0]
    assert doc[0] == vd.cfg.bos_token_id and doc[-1] == vd.cfg.eos_token_id
    texts = open_corpus({"z": ["x"], "y": ["w v"]}, vd)
    assert texts.labels == ["y", "z"] and isinstance(texts, MemoryCorpus)
