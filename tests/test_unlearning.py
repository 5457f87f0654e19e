"""Unlearning analysis: selection rules on planted statistics, the 2x rule by hand, exact pruning
through the edit API against the explicit expansion, statistics and metrics against direct
computations, and a small end-to-end sweep with tables, figures and HTML."""

from __future__ import annotations

import math

import pytest
import torch
from expansion_reference import edited_weights, naive_moes
from tiny_models import tiny_corpus, tiny_model

from monet_interp.analyses.unlearning import (
    Method,
    UnlearningError,
    expert_methods,
    rank_units,
    ratio_scores,
    resolve_labels,
    run_unlearning,
    select_2x,
    select_random,
    select_ratio,
)
from monet_interp.evaluation import EvalSet, EvaluationError, evaluate_sets, token_windows
from monet_interp.stats import window_statistics
from monet_interp.units import ExpertUnits, UnitError


pytestmark = pytest.mark.usefixtures("one_thread")


# ============================================================================================
# selection rules
# ============================================================================================


def test_2x_rule_hand_computed_case():
    # labels x units; the rule: I(F) > 0 and I(F) >= 2 * max over the other labels
    stats = torch.tensor([
        # u0   u1   u2   u3   u4   u5   u6
        [4.0, 2.0, 3.0, 0.0, 1.0, 5.0, 6.0],  # F = label 0
        [2.0, 1.0, 0.5, 0.0, 0.0, 1.0, 3.1],
        [1.0, 1.1, 1.5, 0.0, 0.0, 0.0, 1.0],
    ], dtype=torch.float64)
    # u0: 4 >= 2*2 yes (skew 2); u1: 2 >= 2*1.1 no; u2: 3 >= 2*1.5 yes (skew 2); u3: 0 -> no;
    # u4: 1 >= 0, rival 0 -> yes (skew inf); u5: 5 >= 2 yes (skew 5); u6: 6 >= 6.2 no.
    chosen = select_2x(stats, 0)
    assert set(chosen.tolist()) == {0, 2, 4, 5}
    # most skewed first: u4 (inf), u5 (5), then u0 and u2 (both exactly 2x) by the larger I(F): 4 before 3
    assert chosen.tolist() == [4, 5, 0, 2]
    assert select_2x(stats, 0, factor=3.0).tolist() == [4, 5]
    assert select_2x(stats, 1).tolist() == []  # label 1 is never twice the best other
    assert select_2x(stats, 0, min_value=1.0).tolist() == [5, 0, 2]  # u4 has I(F) = 1, not > 1


def test_2x_rule_finds_planted_experts():
    gen = torch.Generator().manual_seed(0)
    stats = torch.rand(4, 200, generator=gen, dtype=torch.float64) + 1.0  # all within a factor 2
    planted = torch.tensor([7, 50, 123])
    stats[2, planted] = 10.0
    chosen = select_2x(stats, 2)
    assert set(chosen.tolist()) == set(planted.tolist())


def test_ratio_rule_planted_and_eps():
    i_r = torch.full((10,), 1.0, dtype=torch.float64)
    i_f = torch.full((10,), 1.0, dtype=torch.float64)
    i_f[[3, 8]] = 5.0
    i_f[5] = 3.0
    assert select_ratio(i_f, i_r, 3).tolist() == [3, 8, 5]
    assert select_ratio(i_f, i_r, 2, exclude=torch.tensor([3])).tolist() == [8, 5]
    # eps is relative to the mean retain importance: scores are scale-free
    assert torch.allclose(ratio_scores(i_f, i_r), ratio_scores(i_f * 1e-6, i_r * 1e-6))
    # a unit silent on the retain set ranks first, by a bounded score
    i_r[0] = 0.0
    scores = ratio_scores(i_f, i_r, eps=0.01)
    assert int(scores.argmax()) == 0 and math.isfinite(float(scores.max()))
    assert rank_units(torch.tensor([1.0, 2.0, 2.0]), tiebreak=torch.tensor([0.0, 1.0, 5.0])).tolist() == [2, 1, 0]


def test_budget_point_and_refinement():
    from monet_interp.analyses.unlearning import budget_point, refine_target

    def pt(n, forget, retain):
        return {"n_removed": n, "d_forget_top1": forget, "d_retain_top1": retain}

    curve = [pt(10, -1.0, -0.1), pt(20, -3.0, -0.9), pt(40, -6.0, -2.5), pt(80, -9.0, -7.0)]
    assert budget_point(curve, 1.0) == 1  # the largest forget drop within the retain budget
    assert budget_point(curve, 3.0) == 2
    assert refine_target(curve, 1.0) == 28  # geometric mean of 20 and 40
    assert refine_target(curve + [pt(28, -4.0, -1.5)], 1.0) == 24
    assert refine_target([pt(10, -1.0, -2.0)], 1.0) == 5  # all over budget: look below
    assert refine_target([pt(10, -1.0, -0.2)], 1.0) is None


def test_random_rule_count_distinct_reproducible():
    a = select_random(100, 17, seed=3)
    assert len(a) == 17 and len(set(a.tolist())) == 17 and a.max() < 100
    assert torch.equal(a, select_random(100, 17, seed=3))
    assert not torch.equal(a, select_random(100, 17, seed=4))
    b = select_random(10, 20, seed=0, exclude=torch.tensor([1, 2]))
    assert len(b) == 8 and not ({1, 2} & set(b.tolist()))


def test_resolve_labels_and_windows():
    corpus = tiny_corpus(4)
    assert resolve_labels(corpus, "code") == ["lab0", "lab2"]
    assert resolve_labels(corpus, "natural,lab0") == ["lab1", "lab3", "lab0"]
    assert resolve_labels(corpus, None) == corpus.labels
    with pytest.raises(UnlearningError, match="unknown label"):
        resolve_labels(corpus, "python")
    w = token_windows(corpus, "lab1", "val", 100, 16)
    assert w.shape == (7, 17) and w.dtype == torch.int64
    assert torch.equal(w[0], torch.as_tensor(corpus.tokens("lab1", "val")[:17]))
    with pytest.raises(EvaluationError, match="fewer than"):
        token_windows(corpus, "lab1", "val", 100, 1000)


# ============================================================================================
# exact pruning, statistics, metrics
# ============================================================================================


@pytest.mark.parametrize("decompose", ["vertical", "horizontal"])
@pytest.mark.parametrize("scope,heads", [("group", "all"), ("group", "per-head"), ("layer", "all")])
def test_pruning_via_edit_api_equals_explicit_expansion(decompose, scope, heads):
    model = tiny_model(decompose)
    units = ExpertUnits(model, scope=scope, heads=heads)
    chosen = select_random(units.n_units, max(3, units.n_units // 7), seed=1)
    edits = units.edits(chosen)
    tokens = torch.randint(3, 48, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with units.removal(chosen):
            got = model(tokens)
        # explicit expansion: every expert's weight, the chosen ones zeroed, summed against E_ij(x)
        weights = lambda layer, g_row, g_col: edited_weights(edits, layer, model.cfg, g_row, g_col)  # noqa: E731
        with naive_moes(model, weights):
            want = model(tokens)
        clean = model(tokens)
    assert torch.allclose(got, want, atol=2e-5, rtol=1e-4), (got - want).abs().max()
    assert (got - clean).abs().max() > 1e-4  # the pruning did something


def test_expert_edits_decode_units():
    model = tiny_model()
    E = model.cfg.moe_experts
    per_head = ExpertUnits(model, heads="per-head")
    # group 1, head 1, expert (2, 5) and head 0 of the same expert: one edit with both heads
    u = [(1 * 2 + 1) * E * E + 2 * E + 5, (1 * 2 + 0) * E * E + 2 * E + 5]
    (edit,) = per_head.edits(torch.tensor(u))
    assert (edit.i, edit.j, edit.group, edit.heads, edit.op) == (2, 5, 1, (0, 1), "prune")
    layer_units = ExpertUnits(model, scope="layer", layers=[1, 2])
    (edit,) = layer_units.edits(torch.tensor([E * E + 3 * E + 4]))
    assert (edit.i, edit.j, edit.layer, edit.group) == (3, 4, 2, None)
    frame = per_head.describe(torch.tensor(u))
    assert list(frame.columns) == ["unit", "group", "head", "i", "j", "flat_id"]
    with pytest.raises(UnitError):
        ExpertUnits(model, scope="group", layers=[0])


def test_expert_statistics_match_direct_computation():
    model = tiny_model()
    cfg = model.cfg
    windows = torch.randint(3, 48, (3, 11), generator=torch.Generator().manual_seed(2))
    units = ExpertUnits(model)
    per_head = ExpertUnits(model, heads="per-head", fire_threshold=0.05)
    stats = window_statistics(model, units, windows[:, :-1], batch_size=2)
    stats_h = window_statistics(model, per_head, windows[:, :-1], batch_size=2)
    _, cache = model.run_with_cache(windows[:, :-1], names_filter=lambda n: "hook_g_" in n)
    for g in range(cfg.num_routers):
        layer = cfg.layers_of_group(g)[0]
        g1 = cache[f"blocks.{layer}.moe.hook_g_row"].reshape(-1, cfg.moe_heads, cfg.moe_experts).double()
        g2 = cache[f"blocks.{layer}.moe.hook_g_col"].reshape(-1, cfg.moe_heads, cfg.moe_experts).double()
        w = torch.einsum("thi,thj->thij", g1, g2)  # explicit per-token, per-head weights
        n = w.shape[0]
        E2 = cfg.moe_experts ** 2
        assert torch.allclose(stats["mean"][g * E2:(g + 1) * E2], w.sum(1).mean(0).flatten())
        assert torch.allclose(stats["freq"][g * E2:(g + 1) * E2], (w.sum(1) > 0).double().mean(0).flatten())
        H = cfg.moe_heads
        block = slice(g * H * E2, (g + 1) * H * E2)
        assert torch.allclose(stats_h["mean"][block], w.mean(0).flatten())
        assert torch.allclose(stats_h["freq"][block], (w > 0.05).double().sum(0).flatten() / n)


def test_evaluate_sets_matches_manual_metrics():
    model = tiny_model()
    gen = torch.Generator().manual_seed(5)
    windows = torch.randint(3, 48, (3, 9), generator=gen)
    windows[0, 4] = 1  # a bos target: never scored
    common = torch.tensor([10, 11, 12])
    byte_lengths = torch.randint(1, 4, (48,), generator=gen)
    frame = evaluate_sets(model, [EvalSet("a", windows, common, 2.0)], batch_size=2, bos_token_id=1)
    frame_b = evaluate_sets(model, [EvalSet("a", windows, common, 2.0)], bos_token_id=1, byte_lengths=byte_lengths)
    with torch.no_grad():
        logits = model(windows[:, :-1])
    target = windows[:, 1:]
    valid = target != 1
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")[valid]
    top1 = (logits.argmax(-1) == target)[valid].double().mean() * 100
    top10 = (logits.topk(10, -1).indices == target[..., None]).any(-1)[valid].double().mean() * 100
    keep = valid & ~torch.isin(target, common)
    top1_skip = (logits.argmax(-1) == target)[keep].double().mean() * 100
    row = frame.loc["a"]
    assert row["tokens"] == int(valid.sum())
    assert row["loss"] == pytest.approx(float(nll.mean()), rel=1e-5)
    assert row["bpb"] == pytest.approx(float(nll.mean()) / math.log(2) / 2.0, rel=1e-5)
    assert frame_b.loc["a", "bpb"] == pytest.approx(
        float(nll.sum()) / math.log(2) / float(byte_lengths[target][valid].sum()), rel=1e-5)
    assert row["top1"] == pytest.approx(float(top1))
    assert row["top10"] == pytest.approx(float(top10))
    assert row["top1_skip"] == pytest.approx(float(top1_skip))
    with pytest.raises(EvaluationError, match="vocabulary"):
        evaluate_sets(model, [EvalSet("a", windows + 100, common, 2.0)])


# ============================================================================================
# the sweep
# ============================================================================================


def test_run_unlearning_end_to_end_tables_and_html(tmp_path):
    model = tiny_model()
    corpus = tiny_corpus(3, length=300)
    methods = expert_methods(model, ("2x", "ratio", "ratio-iter", "random"), prefix="M")
    result = run_unlearning(model, corpus, forget=["lab0", "lab1"], methods=methods, seq_len=16, stat_tokens=64,
                            eval_forget_tokens=48, eval_tokens=32, curve_forget_tokens=32, curve_retain_tokens=16,
                            fractions=(0.05, 0.1), twox_prefixes=(0.5,), iter_step=0.03, iter_steps=2,
                            stop_after_budget=None, refine_steps=0, byte_lengths=None)
    names = ["M 2x", "M ratio", "M ratio-iter", "M random"]
    assert result.method_names == names
    assert len(result.summary) == 2 * 4 and len(result.points) == 2 * 4 * 3
    s = result.summary.set_index(["method", "forget"])
    for f in ("lab0", "lab1"):
        # the random control removes as many experts as the 2x rule
        assert s.loc[("M random", f), "n_removed"] == s.loc[("M 2x", f), "n_removed"]
        assert s.loc[("M ratio-iter", f), "n_removed"] in (round(0.03 * 72), 2 * round(0.03 * 72))
        assert s.loc[("M ratio", f), "n_removed"] in (round(0.05 * 72), round(0.1 * 72))
        sel = result.selections[("M ratio-iter", f)]
        assert len(set(sel.tolist())) == len(sel)  # an iterative step never re-selects a removed unit
    assert s["target_share_removed"].between(0, 1).all()
    row = s.loc[("M ratio", "lab0")]
    assert row["selectivity_top1"] == pytest.approx(row["d_target_top1"] - row["d_others_top1"])
    pts = result.points
    pt = pts[(pts["method"] == "M ratio") & (pts["forget"] == "lab0")].set_index("label")
    assert row["d_target_bpb"] == pytest.approx(pt.loc["lab0", "d_bpb"])
    assert row["d_others_bpb"] == pytest.approx(pt.loc[["lab1", "lab2"], "d_bpb"].mean())
    table = result.table("M 2x", "top1")
    assert list(table.index) == ["lab0", "lab1"] and list(table.columns) == ["lab0", "lab1", "lab2"]
    # nothing removed -> exactly zero change (a label with no 2x experts, or a random control of 0)
    zero = result.summary[result.summary["n_removed"] == 0]
    assert (zero[["d_target_top1", "d_others_top1", "d_target_bpb"]].abs() < 1e-12).all().all()
    curves = result.curves
    assert curves.groupby(["method", "forget"])["operating_point"].sum().max() == 1
    assert set(curves["method"]) <= {"M 2x", "M ratio", "M ratio-iter"}  # a matched random control has no curve
    assert len(result.clean) == 3 and set(result.clean["label"]) == {"lab0", "lab1", "lab2"}
    md = result.markdown("top1")
    assert md.count("\n") == 2 + 2 and "M random" in md
    html = result.html_section(include_plotlyjs=False)
    assert html.startswith("<section") and html.rstrip().endswith("</section>") and "M ratio-iter" in html
    assert "<script src=" not in html
    folder = result.save(tmp_path / "out", html=False)
    assert (folder / "summary.csv").is_file() and (folder / "selections.json").is_file()
    assert set(result.figures()) >= {"curves_top1", "share_curve_top1", "selectivity_top1"}
    # the equal-share curve: the mean over forgotten labels of each fraction-grid point of the curves
    share = result.share_curve("top1")
    ratio = share[share["method"] == "M ratio"].set_index("fraction")
    grid = curves[(curves["method"] == "M ratio") & (curves["point_kind"] == "fraction 0.05")]
    assert ratio.loc[0.05, "d_forget_top1"] == pytest.approx(grid["d_forget_top1"].mean())
    assert ratio.loc[0.05, "frac_removed"] == pytest.approx(round(0.05 * 72) / 72)
    assert set(result.goal(target=100.0, others=100.0)["met"]) == {True}  # every label "removed" at a lax goal


def test_run_unlearning_validates_arguments():
    model = tiny_model()
    corpus = tiny_corpus(3, length=300)
    with pytest.raises(UnlearningError, match="unknown method"):
        run_unlearning(model, corpus, methods=["3x"])
    with pytest.raises(UnlearningError, match="seq_len"):
        run_unlearning(model, corpus, methods=["2x"], seq_len=64)
    units = ExpertUnits(model)
    with pytest.raises(UnlearningError, match="earlier"):
        run_unlearning(model, corpus, methods=[Method("r", units, "random", match="x"), Method("x", units, "2x")])


def test_routing_stats_adapter():
    from monet_interp.stats import compute_routing_stats

    model = tiny_model()
    corpus = tiny_corpus(3, length=300)
    rs = compute_routing_stats(model, corpus, split="train", max_tokens_per_label=64, seq_len=16, top_k=0,
                               progress=False)
    result = run_unlearning(model, corpus, forget=["lab2"], methods=["2x"], routing_stats=rs, seq_len=16,
                            eval_forget_tokens=32, eval_tokens=16, curve_forget_tokens=16, curve_retain_tokens=16,
                            byte_lengths=None)
    assert any("RoutingStats" in note for note in result.notes)
    assert result.curves.empty and "<section" in result.html_section(include_plotlyjs=False)
    mean = torch.from_numpy(rs.mean_score()).reshape(3, -1).double()
    assert torch.equal(result.selections[("MONET 2x", "lab2")], select_2x(mean, 2))


def test_cli_registers_unlearn():
    import argparse

    from monet_interp.analyses.cli.unlearning import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["unlearn", "--forget", "python,news_sport", "--model", "m", "--corpus", "c",
                              "--out", "o", "--methods", "2x,ratio-iter", "--fractions", "0.01,0.02"])
    assert args.command == "unlearn" and args.methods == ["2x", "ratio-iter"] and args.fractions == (0.01, 0.02)
    assert callable(args.func) and args.scope == "group" and args.heads == "all"


def test_goal_and_share_curve_hand_computed():
    """goal(): the best expert method per label meeting dTarget <= -5 and |dOthers| <= 0.5, neuron
    methods ignored; share_curve(): means over labels at each fraction of the grid."""
    import pandas as pd

    from monet_interp.analyses.unlearning import UnlearningResult

    summary = pd.DataFrame([
        # method, forget, d_target_top1, d_others_top1, n_removed
        ("E ratio", "a", -6.0, -0.4, 10), ("E 2x", "a", -8.0, -0.6, 5), ("N ratio", "a", -9.0, -0.1, 7),
        ("E ratio", "b", -3.0, -0.2, 10), ("E 2x", "b", -7.0, -0.9, 5), ("N ratio", "b", -9.0, 0.0, 7),
    ], columns=["method", "forget", "d_target_top1", "d_others_top1", "n_removed"])
    curves = pd.DataFrame([
        ("E ratio", "a", "fraction 0.01", 0.01, 1, -1.0, -0.1), ("E ratio", "b", "fraction 0.01", 0.01, 1, -3.0, -0.3),
        ("E ratio", "a", "fraction 0.02", 0.02, 2, -5.0, -0.5), ("E ratio", "a", "refinement", 0.015, 1, -2.0, -0.2),
    ], columns=["method", "forget", "point_kind", "frac_removed", "n_removed", "d_forget_top1", "d_retain_top1"])
    methods = [{"name": "E ratio", "units": {"kind": "expert"}}, {"name": "E 2x", "units": {"kind": "expert"}},
               {"name": "N ratio", "units": {"kind": "neuron"}}]
    result = UnlearningResult(clean=pd.DataFrame(), curves=curves, points=pd.DataFrame(), summary=summary,
                              selections={}, methods=methods, labels=["a", "b"], label_kinds={}, settings={},
                              timing={})
    goal = result.goal()
    # a: "E 2x" is stronger but moves the others by 0.6 > 0.5; "E ratio" meets the goal
    assert bool(goal.loc["a", "met"]) and goal.loc["a", "method"] == "E ratio"
    assert goal.loc["a", "d_target_top1"] == -6.0 and goal.loc["a", "n_removed"] == 10
    # b: no expert method meets it (the neuron method would); the calm one is shown, not met
    assert not bool(goal.loc["b", "met"]) and goal.loc["b", "method"] == "E ratio"
    assert result.goal(kind="neuron")["met"].all()
    with pytest.raises(KeyError, match="feature"):
        result.goal(kind="feature")
    share = result.share_curve().set_index("fraction")
    assert share.loc[0.01, "d_forget_top1"] == pytest.approx(-2.0) and share.loc[0.01, "d_retain_top1"] == pytest.approx(-0.2)
    assert share.loc[0.02, "d_forget_top1"] == -5.0 and 0.015 not in share.index  # refinements are not grid points
    assert len(result.figure_share_curve().data) == 2  # forget and retain traces of the one curve method
