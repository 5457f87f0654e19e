"""Trainer, auxiliary losses, dense baseline, checkpoints and expert health (tiny CPU configs)."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch

from monet_interp import HookedMONET, MonetConfig, load_model
from monet_interp.analyses.cli.train import register
from monet_interp.components.router import RoutingFactors
from monet_interp.dense import DenseConfig, HookedDense, matched_dense_config
from monet_interp.training import (
    TrainConfig,
    ambiguity_loss,
    build_model,
    expert_health,
    find_checkpoint,
    neuron_health,
    routing_aux_losses,
    token_byte_lengths,
    train,
    uniformity_loss,
)

VOCAB = 64


class ToyCorpus:
    """Stand-in for monet_interp.data.Corpus: two labels with learnable token patterns."""

    def __init__(self, n_tokens: int = 4000):
        rng = np.random.default_rng(0)
        self.labels = ["count", "pairs"]
        self.vocab_size = VOCAB
        self._streams = {}
        for split in ("train", "val", "test"):
            counting = (np.arange(n_tokens) * 3 + rng.integers(0, 4)) % 30 + 3  # 3..32, stride 3
            pairs = np.repeat(rng.integers(33, VOCAB, size=n_tokens // 2), 2)  # each token twice
            self._streams[("count", split)] = counting.astype(np.int64)
            self._streams[("pairs", split)] = pairs.astype(np.int64)

    def tokens(self, label: str, split: str = "train") -> np.ndarray:
        return self._streams[(label, split)]

    def sample_batch(self, split, batch_size, seq_len, generator, labels=None, label_power=0.0):
        if label_power != 0.0:
            raise NotImplementedError("ToyCorpus draws labels uniformly only (label_power=0)")
        labs = list(labels) if labels is not None else self.labels
        which = torch.randint(0, len(labs), (batch_size,), generator=generator).tolist()
        rows = []
        for index in which:
            stream = self._streams[(labs[index], split)]
            start = int(torch.randint(0, stream.shape[0] - seq_len - 1, (1,), generator=generator))
            rows.append(torch.from_numpy(stream[start:start + seq_len + 1].copy()))
        return torch.stack(rows)


def tiny_config(tmp_path, model="vd", **changes) -> TrainConfig:
    settings = dict(model=model, corpus="unused", out=str(tmp_path / model), steps=30, batch_size=8, seq_len=16,
                    lr=1e-2, warmup_steps=3, d_model=32, n_layers=2, n_heads=2, moe_experts=8, moe_heads=2, moe_dim=4,
                    moe_topk=2, moe_groups=1, vocab_size=VOCAB, max_position_embeddings=64, eval_every=1000,
                    checkpoint_every=1000, eval_batches=1, eval_batch_size=4, test_windows=4, health_batches=2,
                    progress=False)
    settings.update(changes)
    return TrainConfig(**settings)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus():
    return ToyCorpus()


# ---------------------------------------------------------------------------- aux losses
def test_aux_losses_match_hand_computation():
    generator = torch.Generator().manual_seed(0)
    n_tok, heads, experts = 5, 2, 3
    g1 = torch.softmax(torch.randn(1, n_tok, heads, experts, generator=generator), -1)
    g2 = torch.softmax(torch.randn(1, n_tok, heads, experts, generator=generator), -1)
    g1[0, 0, 0] = torch.tensor([0.0, 1.0, 0.0])  # a sparse row, as threshold routing produces
    unif_hand, amb_hand = 0.0, 0.0
    for g in (g1[0], g2[0]):
        for h in range(heads):
            for i in range(experts):
                gbar = sum(g[t, h, i].item() for t in range(n_tok)) / n_tok
                unif_hand -= (1 / (2 * heads)) * (1 / experts) * math.log(gbar + 1e-9)
            amb_hand += sum((1 / (2 * heads)) * (1 - max(g[t, h].tolist())) for t in range(n_tok)) / n_tok
    assert uniformity_loss(g1, g2).item() == pytest.approx(unif_hand, abs=1e-6)
    assert ambiguity_loss(g1, g2).item() == pytest.approx(amb_hand, abs=1e-6)
    # uniform routing reaches the minimum ln E of L_unif and the maximum of L_amb
    flat = torch.full((2, 4, heads, experts), 1 / experts)
    assert uniformity_loss(flat, flat).item() == pytest.approx(math.log(experts), abs=1e-6)
    assert ambiguity_loss(flat, flat).item() == pytest.approx(1 - 1 / experts, abs=1e-6)
    # one-hot routing: no ambiguity
    onehot = torch.nn.functional.one_hot(torch.zeros(2, 4, heads, dtype=torch.long), experts).float()
    assert ambiguity_loss(onehot, onehot).item() == pytest.approx(0.0)


def test_aux_losses_use_full_softmax_for_top1_and_average_groups():
    generator = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(2, 3, 2, 4, generator=generator), -1)
    gate = torch.zeros_like(probs).scatter(-1, probs.argmax(-1, keepdim=True), probs.amax(-1, keepdim=True))
    top1 = RoutingFactors(gate, gate, None, None, probs, probs)
    dense = RoutingFactors(probs, probs)
    unif, amb = routing_aux_losses([top1, dense])
    assert unif.item() == pytest.approx(uniformity_loss(probs, probs).item(), abs=1e-6)
    assert amb.item() == pytest.approx(ambiguity_loss(probs, probs).item(), abs=1e-6)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    masked = uniformity_loss(probs, probs, mask)
    assert masked.item() == pytest.approx(uniformity_loss(probs[mask][None], probs[mask][None]).item(), abs=1e-6)


def test_softmax_uniformity_reaches_experts_no_token_keeps():
    logits = torch.randn(1, 6, 2, 5, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    kept = logits.detach() > logits.detach().sort(-1).values[..., 2:3]  # top-2 per head
    kept[..., 0] = False  # expert 0 is never kept
    g = torch.softmax(logits.masked_fill(~kept, float("-inf")), -1)
    routing = RoutingFactors(g, g, logits, logits)
    for mode, reaches in (("routed", False), ("softmax", True)):
        unif, _ = routing_aux_losses([routing], unif_probs=mode)
        (grad,) = torch.autograd.grad(unif, logits)
        assert bool(grad[..., 0].abs().sum() > 0) is reaches, mode
    with pytest.raises(ValueError, match="unif_probs"):
        routing_aux_losses([routing], unif_probs="nope")


# ---------------------------------------------------------------------------- training
@pytest.mark.parametrize("kind", ["vd", "hd", "top1", "dense"])
def test_trainer_reduces_loss(tmp_path, corpus, kind):
    result = train(tiny_config(tmp_path, kind, steps=20, test_windows=0, health_batches=0), corpus)
    losses = [h["lm_loss"] for h in result.history if "lm_loss" in h]
    assert len(losses) == 20
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5, losses
    assert all(p.requires_grad for p in result.model.parameters())  # routers trained too
    if kind != "dense":
        assert all("l_unif" in h for h in result.history if "lm_loss" in h)
        assert result.model.cfg.moe_routing == ("top1" if kind == "top1" else "threshold")
        assert result.model.cfg.moe_decompose == ("horizontal" if kind == "hd" else "vertical")
    manifest = result.manifest
    assert manifest["tokens_seen"] == 20 * 8 * 16 and set(manifest["final_val_bpb"]) == {"count", "pairs"}


def test_threshold_training_updates_running_stats_only_with_batch_stats(tmp_path, corpus):
    # evaluations (validation + expert health) after steps 1 and 2: training resumes with batch statistics
    result = train(tiny_config(tmp_path, "vd", steps=3, test_windows=0, health_batches=1, eval_every=1), corpus)
    norm = result.model.blocks[0].moe.router.norm1
    assert int(norm.num_batches_tracked) == 3  # one update per training step, none from evaluation
    assert not torch.allclose(norm.running_var, torch.ones_like(norm.running_var))
    written = [json.loads(line) for line in (result.out / "history.jsonl").read_text().splitlines()]
    assert written == result.history
    assert [(h["step"], h.get("eval")) for h in written if "eval" in h] == [
        (1, "val"), (1, "health"), (2, "val"), (2, "health"), (3, "val"), (3, "health")]  # the final point too
    assert written[-1]["dead_pair_share"] == [round(g["dead_pair_share"], 5) for g in result.health["groups"]]


def test_resume_reproduces_uninterrupted_run(tmp_path, corpus):
    settings = dict(steps=12, checkpoint_every=4, eval_every=6, test_windows=0, health_batches=0)
    full = train(tiny_config(tmp_path / "full", "vd", **settings), corpus)
    first = train(tiny_config(tmp_path / "split", "vd", stop_after=7, **settings), corpus)
    assert not first.finished
    out = tmp_path / "split" / "vd"
    assert find_checkpoint(out) is not None and not (out / "config.json").exists()
    resumed = train(tiny_config(tmp_path / "split", "vd", resume=True, **settings), corpus)
    curve_full = [h["lm_loss"] for h in full.history if "lm_loss" in h]
    curve_resumed = [h["lm_loss"] for h in resumed.history if "lm_loss" in h]
    assert len(curve_resumed) == len(curve_full) == 12
    assert np.max(np.abs(np.array(curve_full) - np.array(curve_resumed))) < 1e-4
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name
    with pytest.raises(ValueError, match="different settings"):
        train(tiny_config(tmp_path / "split", "vd", resume=True, **{**settings, "lr": 5e-3}), corpus)


# ---------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("kind", ["vd", "dense"])
def test_saved_checkpoint_reloads_bit_identically(tmp_path, corpus, kind):
    result = train(tiny_config(tmp_path, kind, steps=4, test_windows=0, health_batches=0), corpus)
    loader = HookedDense if kind == "dense" else HookedMONET
    loaded = loader.from_pretrained(result.out)
    assert type(load_model(result.out)) is loader
    original = result.model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert tensor.dtype == original[name].dtype and torch.equal(tensor, original[name]), name
    tokens = corpus.sample_batch("val", 2, 16, torch.Generator().manual_seed(0))
    result.model.eval()
    result.model.set_router_batch_stats(False)
    assert torch.equal(loaded(tokens), result.model(tokens))
    checkpoint = find_checkpoint(result.out)
    assert checkpoint is not None and (checkpoint / "trainer_state.pt").is_file()
    assert torch.equal(loader.from_pretrained(checkpoint)(tokens), result.model(tokens))


def test_train_mode_does_not_change_routing_unless_batch_stats_requested():
    cfg = MonetConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, moe_dim=4,
                      moe_heads=2, moe_experts=8, moe_topk=2, moe_groups=1, max_position_embeddings=64)
    model = HookedMONET(cfg)
    model.init_weights(0)
    tokens = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    _, eval_routing = model(tokens, return_routing=True)
    model.train()
    _, train_routing = model(tokens, return_routing=True)
    for a, b in zip(eval_routing, train_routing):
        assert torch.equal(a.g_row, b.g_row) and torch.equal(a.g_col, b.g_col)
    assert all(torch.equal(v, buffers[k]) for k, v in model.named_buffers())
    model.set_router_batch_stats(True)
    _, batch_routing = model(tokens, return_routing=True)
    assert any(not torch.equal(a.g_row, b.g_row) for a, b in zip(eval_routing, batch_routing))
    assert int(model.blocks[0].moe.router.norm1.num_batches_tracked) == 1


# ---------------------------------------------------------------------------- dense baseline
def test_dense_baseline_matches_parameters_and_has_neuron_hooks():
    cfg = MonetConfig(vocab_size=4096, hidden_size=192, num_hidden_layers=4, num_attention_heads=4, moe_dim=8,
                      moe_heads=4, moe_experts=64, moe_topk=4, moe_groups=2, tie_word_embeddings=True)
    dense_cfg = matched_dense_config(cfg)
    assert abs(dense_cfg.num_parameters() - cfg.num_parameters()) / cfg.num_parameters() < 0.01
    small = HookedDense(DenseConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                    num_attention_heads=2, max_position_embeddings=64))
    assert sum(p.numel() for p in small.parameters()) == small.cfg.num_parameters()
    tokens = torch.randint(0, VOCAB, (2, 10))
    _, cache = small.run_with_cache(tokens)
    assert cache["blocks.1.mlp.hook_post"].shape == (2, 10, 48)
    assert cache["blocks.0.hook_mlp_out"].shape == (2, 10, 32)
    assert (cache["blocks.0.mlp.hook_post"] >= 0).all()
    report = neuron_health(small, [tokens])
    assert 0.0 <= report["overall"]["dead_neuron_share"] <= 1.0


# ---------------------------------------------------------------------------- health, bytes, CLI
def test_expert_health_report(tmp_path):
    config = tiny_config(tmp_path, "vd")
    model = build_model(config, VOCAB)
    tokens = [torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(s)) for s in range(2)]
    report = expert_health(model, tokens)
    assert report["tokens"] == 128 and len(report["groups"]) == model.cfg.num_routers
    group = report["groups"][0]
    for key in ("dead_row_share", "dead_col_share", "dead_pair_share"):
        assert 0.0 <= group[key] <= 1.0
    assert group["dead_pair_share"] >= max(group["dead_row_share"], group["dead_col_share"])
    assert 1.0 <= group["mean_kept_row"] <= model.cfg.moe_experts
    assert group["l_unif"] >= math.log(model.cfg.moe_experts) - 1e-6
    # pairs counted from G1^T G2 agree with the explicit E^2 expansion
    _, routers = model(tokens[0], return_routing=True)
    g1, g2 = routers[0].g_row, routers[0].g_col
    expanded = ((g1[..., :, None] > 0) & (g2[..., None, :] > 0)).flatten(0, 2).any(0)  # [E, E]
    report_one = expert_health(model, tokens[:1])
    assert report_one["groups"][0]["dead_pair_share"] == pytest.approx(float((~expanded).float().mean()))
    # max_vio by hand: kept counts per (head, expert) over both batches, worst (count - mean) / mean
    worst = 0.0
    for factor in ("g_row", "g_col"):
        counts = sum((getattr(model(t, return_routing=True)[1][0], factor) > 0).flatten(0, 1).sum(0).double()
                     for t in tokens)  # [head, expert]
        for head in counts.tolist():
            mean = sum(head) / len(head)
            worst = max(worst, max((c - mean) / mean for c in head))
    assert report["groups"][0]["max_vio"] == pytest.approx(worst)
    # expert_health restores train mode and each router's use_batch_stats
    routers = [block.moe.router for block in model.blocks]
    assert all(r is not None for r in routers)  # one router per layer (moe_groups=1)
    model.train()
    routers[0].use_batch_stats, routers[1].use_batch_stats = True, False
    expert_health(model, tokens)
    assert model.training and [r.use_batch_stats for r in routers] == [True, False]


def test_token_byte_lengths_are_exact_for_byte_level_bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = ["héllo wörld — 日本語 def f(x): return x\n", "the quick brown fox\tjumps"] * 20
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=320, special_tokens=["<|pad|>", "<|bos|>", "<|eos|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    lengths = token_byte_lengths(tok)
    assert lengths[:3].tolist() == [0, 0, 0]
    for text in texts[:2]:
        assert int(lengths[tok.encode(text).ids].sum()) == len(text.encode("utf-8"))


def test_cli_builds_a_train_config(monkeypatch, tmp_path):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--model", "top1", "--corpus", "c", "--out", str(tmp_path), "--steps", "7",
                              "--lr", "0.002", "--labels", "python,go", "--quiet"])
    seen = {}
    monkeypatch.setattr("monet_interp.training.trainer.train", lambda config: seen.setdefault("config", config) and
                        type("R", (), {"finished": True, "out": tmp_path})())
    assert args.func(args) == 0
    config = seen["config"]
    assert (config.model, config.steps, config.lr, config.labels) == ("top1", 7, 0.002, ["python", "go"])
    assert config.routing_rule == "top1" and not config.progress
