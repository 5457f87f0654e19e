"""Routing-health options of the trainer (selection bias, z-loss, routing warmup, label weighting)
and the plain-torch reference step of the training benchmark, against independent computations."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from monet_interp import HookedMONET, MonetConfig
from monet_interp.components.router import MonetRouter, RoutingFactors
from monet_interp.training import build_model, train
from monet_interp.training.losses import (balance_bias_step, expert_load, max_load_violation, router_z_loss,
                                          routing_aux_losses)
from monet_interp.training.trainer import _set_mode, find_checkpoint, train_step

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from reference_training import PlainLM, aux_losses  # noqa: E402
from test_training import ToyCorpus, tiny_config  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------- router selection bias
def test_selection_bias_moves_selection_but_not_the_factor_values():
    torch.manual_seed(0)
    router = MonetRouter(8, n_heads=2, n_experts=6, topk=2, routing="topk", selection_bias=True)
    x = torch.randn(1, 3, 8)
    logits_row, logits_col = router.logits(x)
    router.selection_bias1[0, 5] = 100.0  # head 0 must keep expert 5 on every token
    g_row = router(x).g_row
    for t in range(3):
        for h in range(2):
            score = logits_row[0, t, h] + router.selection_bias1[h]
            kept = torch.topk(score, 2).indices.tolist()  # independent selection by hand
            expected = torch.zeros(6)
            expected[kept] = torch.softmax(logits_row[0, t, h, kept], -1)  # values: raw logits only
            torch.testing.assert_close(g_row[0, t, h], expected)
            if h == 0:
                assert 5 in kept
    torch.testing.assert_close(router(x).g_col, torch.softmax(  # column bias still zero: plain top-k
        logits_col.masked_fill(logits_col < logits_col.topk(2, -1).values[..., -1:], float("-inf")), -1))


def test_selection_bias_in_threshold_and_top1_rules():
    torch.manual_seed(1)
    for rule in ("threshold", "top1"):
        router = MonetRouter(8, n_heads=1, n_experts=5, topk=2, routing=rule, selection_bias=True)
        x = torch.randn(2, 4, 8)
        router.selection_bias1[0, 3] = 50.0
        routing = router(x)
        assert bool((routing.g_row[..., 0, 3] > 0).all()), rule  # forced in by the bias
        if rule == "top1":  # the gate is the chosen expert's full-softmax probability, bias-free
            probs = torch.softmax(routing.logits_row, -1)
            torch.testing.assert_close(routing.g_row[..., 0, 3], probs[..., 0, 3])
            assert int((routing.g_row > 0).sum(-1).max()) == 1


def test_selection_bias_is_saved_and_loaded(tmp_path):
    cfg = MonetConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, moe_dim=4,
                      moe_heads=2, moe_experts=8, moe_topk=2, moe_groups=2, max_position_embeddings=32,
                      moe_selection_bias=True)
    model = HookedMONET(cfg)
    model.blocks[0].moe.router.selection_bias2.copy_(torch.arange(16.0).view(2, 8))
    model.save_pretrained(tmp_path)
    loaded = HookedMONET.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.blocks[0].moe.router.selection_bias2, torch.arange(16.0).view(2, 8))
    assert MonetConfig().to_dict().get("moe_selection_bias") is None  # released configs stay as they were
    tokens = torch.randint(3, 64, (2, 9))
    torch.testing.assert_close(loaded(tokens), model(tokens))


# ---------------------------------------------------------------------------- small pure functions
def test_load_violation_z_loss_and_bias_step_by_hand():
    g = torch.zeros(4, 1, 4)  # 4 tokens, 1 head, 4 experts
    g[0, 0, 0] = g[1, 0, 0] = g[2, 0, 0] = g[3, 0, 1] = 0.7
    g[:, 0, 2] = 0.3
    load = expert_load(g)
    torch.testing.assert_close(load, torch.tensor([[0.75, 0.25, 1.0, 0.0]]))
    mean = 2.0 / 4
    assert math.isclose(max_load_violation(load), (1.0 - mean) / mean)
    bias = torch.zeros(1, 4)
    balance_bias_step(bias, load, 0.1, "mean")
    torch.testing.assert_close(bias, torch.tensor([[-0.1, 0.1, -0.1, 0.1]]))
    skewed = torch.tensor([[1.0, 0.1, 0.1, 0.0]])  # three experts below the mean load of 0.3
    bias = torch.zeros(1, 4)
    balance_bias_step(bias, skewed, 0.1, "mean")  # +-0.1 by sign is [-0.1, 0.1, 0.1, 0.1]; centred: minus 0.05
    torch.testing.assert_close(bias, torch.tensor([[-0.15, 0.05, 0.05, 0.05]]))
    # absolute target k/E = 0.25: not centred, so three starved experts all rise and the head keeps more
    bias = torch.full((1, 4), 0.5)
    balance_bias_step(bias, skewed, 0.1, "absolute", target_load=0.25)
    torch.testing.assert_close(bias, torch.tensor([[0.4, 0.6, 0.6, 0.6]]))
    at_target = torch.tensor([[0.25, 0.25, 0.5, 0.25]])
    balance_bias_step(bias, at_target, 0.1, "absolute", target_load=0.25)  # sign(0) = 0 leaves them
    torch.testing.assert_close(bias, torch.tensor([[0.4, 0.6, 0.5, 0.6]]))
    with pytest.raises(ValueError, match="target load"):
        balance_bias_step(bias, skewed, 0.1, "absolute")
    with pytest.raises(ValueError, match="balance target"):
        balance_bias_step(bias, skewed, 0.1, "median", target_load=0.25)

    logits_row = torch.tensor([[[[0.0, math.log(3.0)]]]])  # logsumexp = log 4
    logits_col = torch.tensor([[[[1.0, 1.0]]]])  # logsumexp = 1 + log 2
    routing = RoutingFactors(logits_row.softmax(-1), logits_col.softmax(-1), logits_row, logits_col)
    expected = 0.5 * (math.log(4.0) ** 2 + (1 + math.log(2.0)) ** 2)
    assert math.isclose(float(router_z_loss([routing, routing])), expected, rel_tol=1e-6)
    with pytest.raises(ValueError, match="raw logits"):
        router_z_loss([RoutingFactors(g, g)])
    with pytest.raises(ValueError, match="at least one router layer"):
        router_z_loss([])


def test_label_power_draws_labels_by_size(tmp_path):
    from monet_interp.data import Corpus

    corpus = Corpus.__new__(Corpus)  # only what sample_batch reads
    sizes = {"big": 40_000, "small": 10_000}
    streams = {lab: np.arange(n, dtype=np.int64) % 50 for lab, n in sizes.items()}
    corpus.labels = list(sizes)
    corpus.splits = ("train",)
    corpus.stats = lambda lab, split: {"tokens": sizes[lab]}
    corpus.tokens = lambda lab, split: streams[lab]
    generator = torch.Generator().manual_seed(0)
    _, which = corpus.sample_batch("train", 4000, 8, generator, return_labels=True, label_power=0.5)
    share_big = float((which == 0).float().mean())
    assert abs(share_big - 2 / 3) < 0.03  # sqrt(40k) : sqrt(10k) = 2 : 1
    _, which = corpus.sample_batch("train", 4000, 8, torch.Generator().manual_seed(0), return_labels=True)
    assert abs(float((which == 0).float().mean()) - 0.5) < 0.03
    with pytest.raises(ValueError, match="label_power"):
        corpus.sample_batch("train", 4, 8, generator, label_power=2.0)


# ---------------------------------------------------------------------------- trainer
def test_balance_rate_trains_biases_and_resumes_exactly(tmp_path):
    corpus = ToyCorpus()
    config = tiny_config(tmp_path, steps=12, balance_rate=0.05, balance_target="mean", z_loss_weight=1e-3,
                         checkpoint_every=4)
    full = train(config, corpus)
    bias = full.model.blocks[0].moe.router.selection_bias1
    assert float(bias.abs().sum()) > 0  # the balancing moved them
    torch.testing.assert_close(bias.mean(-1), torch.zeros(bias.shape[0]), atol=1e-6, rtol=0)  # centred per head
    # each step moves every bias by +-rate (0 at the mean load) plus the centring shift (at most rate)
    steps = 12
    assert float(bias.abs().max()) <= 2 * steps * 0.05 + 1e-6
    records = [h for h in full.history if "lm_loss" in h]
    groups = full.model.cfg.num_routers
    assert all("z_loss" in h and len(h["max_vio"]) == groups and len(h["dead_in_batch"]) == groups for h in records)

    interrupted = tiny_config(tmp_path / "b", steps=12, balance_rate=0.05, balance_target="mean", z_loss_weight=1e-3,
                              checkpoint_every=4, stop_after=8)
    train(interrupted, corpus)
    assert find_checkpoint(Path(interrupted.out)) is not None
    resumed = train(tiny_config(tmp_path / "b", steps=12, balance_rate=0.05, balance_target="mean",
                                z_loss_weight=1e-3, checkpoint_every=4, resume=True), corpus)
    for (name, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)


def test_absolute_balance_target_follows_the_sign_of_k_over_e_minus_load(tmp_path):
    """One trainer step with the absolute target moves every bias by exactly -rate, 0 or +rate, by the
    sign of k/E minus that expert's load in the step's batch (recomputed here from the routing the
    step saw), and does not centre them."""
    corpus = ToyCorpus()
    rate = 0.05
    config = tiny_config(tmp_path, steps=1, balance_rate=rate, balance_target="absolute")
    torch.manual_seed(0)
    model = build_model(config, 64)
    _set_mode(model, config, True)
    model.blocks[0].moe.router.selection_bias1[:, 0] = -100.0  # row expert 0 of layer 0: kept by no token
    start = [block.moe.router.selection_bias1.clone() for block in model.blocks]
    batch = corpus.sample_batch("train", config.batch_size, config.seq_len, torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, routers = model(batch, return_type=None, return_routing=True)
    target = config.moe_topk / config.moe_experts
    expected = [rate * torch.sign(target - expert_load(r.g_row)) for r in routers]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.0)  # weights stay put, so only the biases move
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    record = train_step(model, batch, config, optimizer, scheduler, params, 0)
    for block, before, want in zip(model.blocks, start, expected):
        torch.testing.assert_close(block.moe.router.selection_bias1 - before, want)
    assert any(float(w.mean().abs()) > 0 for w in expected)  # not centred
    # the step's routing metrics, recomputed from the same routing
    vio = [max(max_load_violation(expert_load(r.g_row)), max_load_violation(expert_load(r.g_col))) for r in routers]
    dead = [0.5 * sum(float((~(g > 0).flatten(0, -2).any(0)).float().mean()) for g in (r.g_row, r.g_col))
            for r in routers]  # share of halves no token and no head keeps
    assert record["max_vio"] == pytest.approx(vio, abs=5e-5)
    assert record["dead_in_batch"] == pytest.approx(dead, abs=5e-5)
    assert len(vio) == model.cfg.num_routers and max(vio) > 0 and dead[0] >= 0.5 / 8


def test_routing_warmup_keeps_more_experts_early_and_restores_the_rule(tmp_path):
    corpus = ToyCorpus()
    torch.manual_seed(0)
    base = tiny_config(tmp_path, steps=1)
    model = build_model(base, 64)
    model.set_router_batch_stats(True)
    batch = corpus.sample_batch("train", 8, 16, torch.Generator().manual_seed(0))
    router = model.blocks[0].moe.router
    kept = []
    for scale in (0.0, 1.0):
        router.threshold_scale = scale
        with torch.no_grad():
            _, routers = model(batch, return_type=None, return_routing=True)
        kept.append(float((routers[0].g_row > 0).sum(-1).float().mean()))
    router.threshold_scale = 1.0
    assert kept[0] > kept[1]
    # the trainer's step anneals sigma: scale step / warmup (0 at step 0), the plain rule from the warmup on
    config = tiny_config(tmp_path / "w", steps=4, routing_warmup_steps=3)
    _set_mode(model, config, True)
    routers_modules = [block.moe.router for block in model.blocks]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.0)  # weights stay put between the steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    masks = {}
    for step, scale in ((0, 0.0), (1, 1 / 3), (3, 1.0)):
        for module in routers_modules:
            module.threshold_scale = scale
        with torch.no_grad():
            _, routers = model(batch, return_type=None, return_routing=True)
        for module in routers_modules:
            module.threshold_scale = 1.0
        seen = []
        with model.hooks(fwd_hooks=[("blocks.0.moe.hook_g_row", lambda g, hook: seen.append(g.detach() > 0))]):
            train_step(model, batch, config, optimizer, scheduler, params, step)
        assert torch.equal(seen[0], routers[0].g_row > 0), step
        assert all(module.threshold_scale == 1.0 for module in routers_modules)  # restored after the step
        masks[step] = seen[0]
    assert int(masks[0].sum()) > int(masks[3].sum())  # the warmup changed the kept count


# ---------------------------------------------------------------------------- reference step = same math
def _copy_into_plain(model, plain: PlainLM) -> None:
    state = model.state_dict()
    with torch.no_grad():
        plain.embed.copy_(state["embed.W_E"])
        n = model.cfg.num_hidden_layers
        for layer in range(n):
            pre = f"blocks.{layer}."
            plain.attn[layer].qkv.weight.copy_(torch.cat([state[pre + f"attn.{p}_proj.weight"] for p in "qkv"]))
            plain.attn[layer].out.weight.copy_(state[pre + "attn.o_proj.weight"])
            plain.norms[2 * layer].copy_(state[pre + "ln1.weight"])
            plain.norms[2 * layer + 1].copy_(state[pre + "ln2.weight"])
            if plain.kind == "dense":
                plain.up[layer].weight.copy_(state[pre + "mlp.up_proj.weight"])
                plain.down[layer].weight.copy_(state[pre + "mlp.down_proj.weight"])
                continue
            moe = plain.moe[layer]
            if plain.kind == "hd":
                for name in ("u.weight", "u.bias", "v.weight", "b"):
                    moe.get_parameter(name).copy_(state[pre + "moe." + name])
            else:
                for name in ("u1.weight", "u1.bias", "u2.weight", "u2.bias", "b1", "b2"):
                    moe.get_parameter(name).copy_(state[pre + "moe." + name])
                for k, name in enumerate(("v11", "v12", "v21", "v22")):
                    moe.v[k].weight.copy_(state[pre + f"moe.{name}.weight"])
            if pre + "moe.router.w1.weight" in state:
                router = plain.routers[layer // plain.groups]
                router.w.weight.copy_(torch.cat([state[pre + "moe.router.w1.weight"],
                                                 state[pre + "moe.router.w2.weight"]]))
        plain.norms[-1].copy_(state["ln_final.weight"])


@pytest.mark.parametrize("kind", ["vd", "hd", "top1", "dense"])
def test_reference_step_computes_the_trainers_objective(tmp_path, kind):
    config = tiny_config(tmp_path, model=kind, n_layers=2, moe_groups=2)
    model = build_model(config, 64)
    model.train()
    model.set_router_batch_stats(kind != "top1" and kind != "dense")
    shape = dict(vocab=64, d=32, layers=2, heads=2, experts=8, moe_heads=2, m=4, topk=2, groups=2)
    if kind == "dense":
        shape["d_mlp"] = model.cfg.intermediate_size
    plain = PlainLM(kind, **shape)
    _copy_into_plain(model, plain)
    batch = torch.randint(3, 64, (4, 17), generator=torch.Generator().manual_seed(0))
    lm_loss, routers = model(batch, return_type="loss", return_routing=True)
    plain_loss, plain_routers = plain(batch)
    torch.testing.assert_close(plain_loss, lm_loss, rtol=1e-5, atol=1e-5)
    if kind != "dense":
        unif, amb = routing_aux_losses(routers)
        torch.testing.assert_close(aux_losses(plain_routers), unif + amb, rtol=1e-5, atol=1e-5)
        total, plain_total = lm_loss + 1e-3 * (unif + amb), plain_loss + 1e-3 * aux_losses(plain_routers)
    else:
        total, plain_total = lm_loss, plain_loss
    total.backward()
    plain_total.backward()
    torch.testing.assert_close(plain.embed.grad, model.embed.W_E.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("changes, message", [
    ({"precision": "fp16"}, "precision"),
    ({"label_power": 1.5}, "label_power"),
    ({"balance_rate": -0.1}, "must be >= 0"),
    ({"balance_target": "median"}, "balance_target"),
    ({"z_loss_weight": -1.0}, "must be >= 0"),
    ({"routing_warmup_steps": -3}, "must be >= 0"),
])
def test_train_config_rejects_bad_routing_options(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(tmp_path, **changes)


def test_cli_exposes_the_routing_options(tmp_path):
    import argparse

    from monet_interp.analyses.cli.train import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["train", "--out", str(tmp_path), "--balance-rate", "0.01", "--z-loss-weight", "1e-3",
                              "--routing-warmup-steps", "7", "--label-power", "0.5", "--precision", "bfloat16"])
    assert (args.balance_rate, args.z_loss_weight, args.routing_warmup_steps, args.label_power, args.precision) == (
        0.01, 1e-3, 7, 0.5, "bfloat16")
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--out", str(tmp_path), "--precision", "fp16"])
