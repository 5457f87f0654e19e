"""Router steering acts on the router's selection score: with non-zero selection biases and
non-trivial running statistics, "activate" keeps the expert and "deactivate" drops it for every
routing rule; with zero biases and top-k / top-1 routing the forced logits equal the raw-logit rule
(head max + margin, head min - margin)."""

from __future__ import annotations

import pytest
import torch

from tiny_models import steering_cfg

from monet_interp import HookedMONET
from monet_interp.editing.router_steering import RouterLogitSteer, force_router_logits

ROUTINGS = ("threshold", "topk", "top1")
TOKENS = torch.tensor([[1, 5, 9, 14, 3, 22, 7], [1, 30, 2, 8, 8, 40, 11]])


def biased_model(routing: str, seed: int = 3, bias: bool = True) -> HookedMONET:
    model = HookedMONET(steering_cfg(routing=routing, moe_selection_bias=bias))
    model.init_weights(seed)
    gen = torch.Generator().manual_seed(seed)
    for block in model.blocks:
        router = block.moe.router
        if router is None:
            continue
        for norm in (router.norm1, router.norm2):  # per-head statistics far from (0, 1)
            norm.running_mean.copy_(torch.randn(2, generator=gen) * 2.0)
            norm.running_var.copy_(torch.rand(2, generator=gen) * 5.0 + 0.05)
        if bias:  # large biases: the raw-logit rule would pick the wrong experts
            router.selection_bias1.copy_(torch.randn(2, 8, generator=gen) * 4.0)
            router.selection_bias2.copy_(torch.randn(2, 8, generator=gen) * 4.0)
    return model.eval()


def routing_factors(model: HookedMONET, layer: int, ctx=None) -> tuple[torch.Tensor, torch.Tensor]:
    names = (f"blocks.{layer}.moe.hook_g_row", f"blocks.{layer}.moe.hook_g_col")
    with torch.no_grad(), (ctx if ctx is not None else torch.enable_grad()):
        _, cache = model.run_with_cache(TOKENS, names_filter=lambda n: n in names)
    return cache[names[0]], cache[names[1]]


@pytest.mark.parametrize("routing", ROUTINGS)
def test_selection_affine_matches_the_router_rule(routing):
    """score = scale * (logit - center) + bias reproduces the kept set of MonetRouter.gate."""
    model = biased_model(routing)
    router = model.blocks[0].moe.router
    logits = torch.randn(2, 5, 2, 8, generator=torch.Generator().manual_seed(1)) * 3
    scale, center, bias = router.selection_affine("row")
    score = scale * (logits - center) + bias
    g, _ = router.gate(logits, router.norm1, router.selection_bias1)
    if routing == "threshold":
        bar = score.amax(-1, keepdim=True).clamp_max(router.selection_floor)
        torch.testing.assert_close(g > 0, score >= bar)
    elif routing == "topk":
        assert torch.equal(g > 0, score >= score.topk(3, dim=-1).values[..., -1:])
    else:
        assert torch.equal(g.argmax(-1), score.argmax(-1))
    with pytest.raises(ValueError, match="side"):
        router.selection_affine("up")


@pytest.mark.parametrize("routing", ROUTINGS)
@pytest.mark.parametrize("alpha", [1e-3, 0.5])
def test_activate_keeps_and_deactivate_drops_with_biases(routing, alpha):
    model = biased_model(routing)
    for group in range(model.cfg.num_routers):
        layer = model.cfg.router_layers[group]
        base_row, base_col = routing_factors(model, layer)
        for head in range(2):
            # the experts each head uses least and most often: the hardest to switch on / off
            ti, tj = int((base_row[..., head, :] > 0).sum((0, 1)).argmin()), int((base_col[..., head, :] > 0).sum((0, 1)).argmin())
            on_row, on_col = routing_factors(model, layer, RouterLogitSteer({group: {head: (ti, tj)}}, "activate")
                                             .context(model, alpha))
            assert (on_row[..., head, ti] > 0).all() and (on_col[..., head, tj] > 0).all()
            ui, uj = int((base_row[..., head, :] > 0).sum((0, 1)).argmax()), int((base_col[..., head, :] > 0).sum((0, 1)).argmax())
            off_row, off_col = routing_factors(model, layer, RouterLogitSteer({group: {head: (ui, uj)}}, "deactivate")
                                               .context(model, alpha))
            assert (off_row[..., head, ui] == 0).all() and (off_col[..., head, uj] == 0).all()
            other = 1 - head  # the other head routes as before
            assert torch.equal(off_row[..., other, :] > 0, base_row[..., other, :] > 0)


def test_threshold_deactivate_drops_an_expert_above_sigma():
    """Threshold routing keeps every expert whose score is above sigma: forcing below the head's
    minimum alone is not enough when the whole head scores above it."""
    model = biased_model("threshold", bias=False)
    router = model.blocks[0].moe.router
    logits = torch.randn(1, 4, 2, 8, generator=torch.Generator().manual_seed(2))
    scale, center, _ = router.selection_affine("row")
    logits = center + (logits.abs() + router.selection_floor + 0.5) / scale  # every score above sigma
    g, _ = router.gate(logits, router.norm1, None)
    assert (g[..., 0, :] > 0).all()
    forced = force_router_logits(logits, {0: [2]}, "deactivate", 0.1, router, "row")
    g, _ = router.gate(forced, router.norm1, None)
    assert (g[..., 0, 2] == 0).all() and (g[..., 0, :] > 0).sum(-1).eq(7).all()


@pytest.mark.parametrize("routing", ["topk", "top1"])
def test_zero_biases_equal_the_raw_logit_rule(routing):
    model = biased_model(routing, bias=False)
    router = model.blocks[0].moe.router
    logits = torch.randn(2, 3, 2, 8, generator=torch.Generator().manual_seed(0))
    up = force_router_logits(logits, {1: [2, 5]}, "activate", 0.5, router, "col")
    want = logits.clone()
    want[..., 1, [2, 5]] = (logits[..., 1, :].amax(-1) + 0.5)[..., None].expand(2, 3, 2)
    assert torch.equal(up, want)
    down = force_router_logits(logits, {0: [0]}, "deactivate", 2.0, router, "row")
    want = logits.clone()
    want[..., 0, 0] = logits[..., 0, :].amin(-1) - 2.0
    assert torch.equal(down, want)
    assert torch.equal(force_router_logits(logits, {0: [0]}, "deactivate", 2.0), down)  # no router: same rule


def test_force_router_logits_errors_and_target_forms():
    logits = torch.randn(2, 3, 4, 6, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="cannot deactivate all"):
        force_router_logits(logits, {0: list(range(6))}, "deactivate")
    with pytest.raises(ValueError, match="mode must be 'activate' or 'deactivate', got 'boost'"):
        force_router_logits(logits, {0: [1]}, "boost")
    with pytest.raises(ValueError, match="mode must be 'activate' or 'deactivate', got 'boost'"):
        RouterLogitSteer({1: {0: (1, 2)}}, mode="boost")
    # targets: one (i, j) per head, as select_top1_targets gives, or lists of pairs (e.g. from JSON)
    assert RouterLogitSteer({1: {0: (1, 2)}}).targets == {1: {0: [(1, 2)]}}
    assert RouterLogitSteer({1: {0: [1, 2]}}).targets == {1: {0: [(1, 2)]}}
    assert RouterLogitSteer({1: {0: [[1, 2], (3, 4)]}}).targets == {1: {0: [(1, 2), (3, 4)]}}
