"""Routing statistics (monet_interp.stats) against an explicit-expansion reference, distributed
equals single-process, planted top-k contexts, save/load checks, and generic unit statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import BOS, EOS, PLANT, STAND_IN_CFG, make_model, stand_in_corpus, stand_in_dense

from monet_interp import HookedMONET, MonetConfig
from monet_interp.stats import (
    RoutingStats,
    StatsMetadataError,
    UnitStats,
    compute_routing_stats,
    compute_unit_stats,
    merge_topk,
    plan_windows,
    sparse_expert_scores,
)
from monet_interp.stats.collectives import run_local
from monet_interp.stats.stream import POS_BITS, sample_mask
from monet_interp.stats.topk import TopKBuffer
from monet_interp.units import dense_neurons, monet_experts


class ModClasses:
    """Token classes = token id mod 3, for "python" documents only."""

    class_names = ["zero", "one", "two"]

    def applies_to(self, label):
        return label == "python"

    def classes(self, label, doc_index, tokens):
        return np.asarray(tokens, dtype=np.int64) % 3


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return make_model(0)


@pytest.fixture(scope="module")
def corpus():
    return stand_in_corpus(0)


# ------------------------------------------------------------------------------------ reference
def reference(model, corpus, *, seq_len, thr, top_k, classifier=None, rate=0.0):
    """Everything by explicit expansion g[t,h,i,j] = g1[t,h,i] g2[t,h,j], one window at a time."""
    cfg = model.cfg
    G, H, E = cfg.num_routers, cfg.moe_heads, cfg.moe_experts
    L = len(corpus.labels)
    C = len(classifier.class_names) if classifier else 0
    out = dict(tokens=np.zeros(L, np.int64), score_sum=np.zeros((L, G, E, E)), fire=np.zeros((L, G, E, E), np.int64),
               head_sum=np.zeros((G, H, E, E)), doc_max=[], class_tokens=np.zeros(C, np.int64),
               class_sum=np.zeros((C, G, E, E)), class_fire=np.zeros((C, G, E, E), np.int64),
               positive=np.zeros((L, G)), sample={})
    contexts = [[[] for _ in range(E * E)] for _ in range(G)]
    doc_id = 0
    for li, lab in enumerate(corpus.labels):
        for di, doc in enumerate(corpus.documents(lab, "val")):
            dmax = np.zeros((G, E * E), np.float32)
            cls_doc = classifier.classes(lab, di, doc) if classifier and classifier.applies_to(lab) else None
            for start in range(0, len(doc), seq_len):
                window = torch.tensor(doc[start:start + seq_len].astype(np.int64))[None]
                _, cache = model.run_with_cache(window, names_filter=lambda n: "hook_g_" in n, return_type=None)
                count = (window[0] != BOS) & (window[0] != EOS)
                cnt = count.numpy()
                pos = start + np.arange(window.shape[1])
                keys = (doc_id << POS_BITS) | pos
                cls = cls_doc[pos] if cls_doc is not None else None
                out["tokens"][li] += cnt.sum()
                if cls is not None:
                    out["class_tokens"] += np.bincount(cls[cnt], minlength=C)
                for g in range(G):
                    layer = cfg.layers_of_group(g)[0]
                    g1 = cache[f"blocks.{layer}.moe.hook_g_row"][0]
                    g2 = cache[f"blocks.{layer}.moe.hook_g_col"][0]
                    full = (g1[:, :, :, None] * g2[:, :, None, :])[count]  # [P, H, E, E]: the expansion
                    s = full.sum(1).numpy()  # [P, E, E]
                    out["score_sum"][li, g] += s.astype(np.float64).sum(0)
                    out["head_sum"][g] += full.double().sum(0).numpy()
                    out["fire"][li, g] += (s > thr).sum(0)
                    out["positive"][li, g] += (s > 0).sum()
                    flat = s.reshape(s.shape[0], E * E)
                    if len(flat):
                        dmax[g] = np.maximum(dmax[g], flat.max(0))
                    for p, e in zip(*np.nonzero(flat > 0)):
                        contexts[g][e].append((float(flat[p, e]), int(keys[cnt][p])))
                    if cls is not None:
                        for c in range(C):
                            out["class_sum"][c, g] += s[cls[cnt] == c].astype(np.float64).sum(0)
                            out["class_fire"][c, g] += (s[cls[cnt] == c] > thr).sum(0)
                    if rate > 0 and (classifier is None or cls is not None):
                        chosen = sample_mask(torch.from_numpy(keys[cnt]), rate).numpy()
                        for p in np.flatnonzero(chosen):
                            out["sample"].setdefault(int(keys[cnt][p]), np.zeros((G, E * E), np.float32))[g] = flat[p]
            out["doc_max"].append(dmax)
            doc_id += 1
    out["doc_max"] = np.stack(out["doc_max"], 1)  # [G, D, E*E]
    top_s = np.full((G, E * E, top_k), -np.inf, np.float32)
    top_k_ = np.full((G, E * E, top_k), -1, np.int64)
    for g in range(G):
        for e in range(E * E):
            best = sorted(contexts[g][e], key=lambda x: (-x[0], x[1]))[:top_k]
            for r, (sc, key) in enumerate(best):
                top_s[g, e, r], top_k_[g, e, r] = sc, key
    out["top_score"], out["top_key"] = top_s, top_k_
    return out


# ------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("heads", [1, 3])
def test_sparse_scores_equal_expansion(heads):
    gen = torch.Generator().manual_seed(heads)
    T, E = 40, 8
    g1 = torch.rand(T, heads, E, generator=gen) * (torch.rand(T, heads, E, generator=gen) < 0.4)
    g2 = torch.rand(T, heads, E, generator=gen) * (torch.rand(T, heads, E, generator=gen) < 0.4)
    g1[0] = 0  # a token with no routing at all
    t, e, s = sparse_expert_scores(g1, g2)
    full = torch.einsum("thi,thj->tij", g1, g2).reshape(T, -1)
    assert len(set(zip(t.tolist(), e.tolist()))) == len(t), "a (token, expert) pair was emitted twice"
    dense = torch.zeros(T, E * E)
    dense[t, e] = s
    torch.testing.assert_close(dense, full, atol=1e-6, rtol=1e-6)
    assert (s > 0).all() and len(t) == int((full > 0).sum())


def test_routing_keeps_several_experts(model):
    """The fixture really exercises multi-expert threshold routing (not a degenerate top-1)."""
    _, routers = model(torch.randint(3, 60, (2, 20)), return_type=None, return_routing=True)
    kept = (routers[0].g_row > 0).sum(-1).float()
    assert kept.mean() > 1.5 and kept.max() > kept.min()


def test_stats_equal_explicit_expansion(model, corpus):
    thr, k, seq = 0.05, 5, 16
    # batch_size=1: every window runs alone, as in the reference, so the routing factors are
    # bit-identical and only the aggregation differs (batching is tested separately)
    stats = compute_routing_stats(model, corpus, seq_len=seq, batch_size=1, top_k=k, fire_threshold=thr,
                                  doc_max=True, token_classes=ModClasses(), progress=False)
    ref = reference(model, corpus, seq_len=seq, thr=thr, top_k=k, classifier=ModClasses())
    np.testing.assert_array_equal(stats.tokens, ref["tokens"])
    np.testing.assert_allclose(stats.score_sum, ref["score_sum"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats.mean_score(), ref["score_sum"] / ref["tokens"][:, None, None, None], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_array_equal(stats.fire_count, ref["fire"])
    np.testing.assert_allclose(stats.head_score_sum, ref["head_sum"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats.doc_max, ref["doc_max"], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(stats.hist_count.sum(-1), ref["positive"])
    np.testing.assert_array_equal(stats.topk_key, ref["top_key"])
    np.testing.assert_allclose(stats.topk_score, ref["top_score"], rtol=1e-6)
    np.testing.assert_array_equal(stats.class_tokens, ref["class_tokens"])
    np.testing.assert_allclose(stats.class_score_sum, ref["class_sum"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(stats.class_fire_count, ref["class_fire"])
    # derived views
    prof = stats.profile()
    alive = stats.score_sum.sum(0) > 0
    np.testing.assert_allclose(prof.sum(0)[alive], 1.0, rtol=1e-9)
    assert np.isnan(prof.sum(0)[~alive]).all()
    np.testing.assert_allclose(stats.frequency(), ref["fire"] / ref["tokens"][:, None, None, None])
    # the per-head totals add up to the label sums, and the histogram to the positive scores
    np.testing.assert_allclose(stats.head_score_sum.sum(1), stats.score_sum.sum(0), rtol=1e-6)
    edges, counts = stats.histogram(group=1)
    assert counts.sum() == ref["positive"][:, 1].sum() and edges[0] == 0 and math.isclose(edges[-1], 2.0)
    # top-k contexts as a frame
    frame = stats.top_contexts(0, *stats.expert_ij(int(np.argmax(stats.fire_count[:, 0].sum(0)))))
    assert list(frame.columns) == ["rank", "score", "label", "doc", "pos", "doc_global"]
    assert frame["score"].is_monotonic_decreasing and len(frame) == k


def test_token_sample_equals_expansion(model, corpus):
    rate_target = 60
    stats = compute_routing_stats(model, corpus, seq_len=16, batch_size=1, top_k=0, token_classes=ModClasses(),
                                  token_sample=rate_target, progress=False)
    rate = stats.metadata["settings"]["token_sample_rate"]
    ref = reference(model, corpus, seq_len=16, thr=0.01, top_k=1, classifier=ModClasses(), rate=rate)
    keys = sorted(ref["sample"])
    np.testing.assert_array_equal(stats.sample_key, keys)
    assert 20 <= len(keys) <= 150
    for g in range(stats.n_groups):
        dense = stats.sample_scores(g)
        np.testing.assert_allclose(dense, np.stack([ref["sample"][k][g] for k in keys]), rtol=1e-6, atol=1e-7)
    assert (stats.sample_label == 0).all()  # only "python" documents are classified
    docs, pos = stats.sample_key >> POS_BITS, stats.sample_key & ((1 << POS_BITS) - 1)
    want = [int(corpus.documents("python")[stats.doc_index[d]][p]) % 3 for d, p in zip(docs, pos)]
    np.testing.assert_array_equal(stats.sample_class, want)


def test_batching_does_not_change_results(model, corpus):
    """Padding and batch composition change the routing factors only by float rounding (~1e-7)."""
    a = compute_routing_stats(model, corpus, seq_len=16, batch_size=1, top_k=4, progress=False)
    b = compute_routing_stats(model, corpus, seq_len=16, batch_size=7, top_k=4, progress=False)
    np.testing.assert_allclose(a.score_sum, b.score_sum, rtol=1e-5, atol=1e-5)
    assert np.abs(a.fire_count - b.fire_count).max() <= 1
    np.testing.assert_allclose(a.topk_score, b.topk_score, rtol=1e-5)
    assert (a.topk_key == b.topk_key).mean() > 0.99
    assert np.abs(a.hist_count - b.hist_count).sum() <= 0.001 * a.hist_count.sum()


def test_max_tokens_and_windows(corpus):
    plan = plan_windows(corpus, ["english", "python"], "val", seq_len=10, max_tokens_per_label=50)
    assert plan.labels == ["english", "python"]
    assert (plan.doc_tokens_per_label() <= 50).all() and (plan.doc_tokens_per_label() == 50).all()
    # windows tile every (truncated) document exactly once
    for d, doc in enumerate(plan.docs):
        w = plan.win_doc == d
        assert plan.win_len[w].sum() == len(doc) and (plan.win_start[w] % 10 == 0).all()


def _worker(rank, world, state, cfg, kwargs):
    model = HookedMONET(MonetConfig(**cfg))
    model.load_state_dict(state)
    return compute_routing_stats(model.eval(), stand_in_corpus(0), **kwargs)


def test_distributed_two_processes_equal_single(model, corpus):
    # batch_size=1 makes every window's forward identical in both runs; only the reductions differ
    kwargs = dict(seq_len=16, batch_size=1, top_k=4, fire_threshold=0.05, doc_max=True, token_classes=None,
                  token_sample=40, progress=False)
    single = compute_routing_stats(model, corpus, **kwargs)
    # fork: the children reuse this process's imports (spawn would re-import torch and friends)
    results = run_local(_worker, 2, {k: v.clone() for k, v in model.state_dict().items()}, STAND_IN_CFG, kwargs,
                        start_method="fork")
    assert len(results) == 2
    for res in results:
        assert res.metadata["settings"]["world_size"] == 2
        np.testing.assert_array_equal(res.tokens, single.tokens)
        np.testing.assert_allclose(res.score_sum, single.score_sum, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(res.head_score_sum, single.head_score_sum, rtol=1e-9, atol=1e-9)
        np.testing.assert_array_equal(res.fire_count, single.fire_count)
        np.testing.assert_array_equal(res.hist_count, single.hist_count)
        np.testing.assert_array_equal(res.topk_key, single.topk_key)
        np.testing.assert_array_equal(res.topk_score, single.topk_score)
        np.testing.assert_array_equal(res.doc_max, single.doc_max)
        np.testing.assert_array_equal(res.sample_key, single.sample_key)
        np.testing.assert_array_equal(res.sample_scores(1), single.sample_scores(1))


def test_topk_planted_contexts(model):
    """Force expert (i*, j*) of group 0 to weight 1 in every head on planted tokens: it scores H
    there (the maximum), so those contexts come first, ties ordered by (doc, pos)."""
    plants = {("java", 3, 7): None, ("english", 1, 4): None}
    corpus = stand_in_corpus(0, plants=plants)
    istar, jstar = 5, 2
    H = model.cfg.moe_heads
    plant_mask = {}

    def find(embed, hook):
        plant_mask["m"] = torch.isclose(embed, model.W_E[PLANT]).all(-1)

    def force(index):
        def hook(logits, hook):
            m = plant_mask["m"]  # [batch, pos]: the planted tokens
            out = logits.clone()
            sel = torch.full_like(out[m], -50.0)  # [n, head, expert]
            sel[..., index] = 50.0  # every head keeps only `index`, with weight 1
            out[m] = sel
            return out
        return hook

    base = compute_routing_stats(model, corpus, seq_len=16, batch_size=4, top_k=3, progress=False)
    assert base.topk_score[0, base.expert_id(istar, jstar)].max() < H - 1e-3  # nothing scores H naturally
    hooks = [("hook_embed", find), ("blocks.0.moe.hook_router_logits_row", force(istar)),
             ("blocks.0.moe.hook_router_logits_col", force(jstar))]
    with model.hooks(fwd_hooks=hooks):
        stats = compute_routing_stats(model, corpus, seq_len=16, batch_size=4, top_k=3, progress=False)
    top = stats.top_contexts(0, istar, jstar)
    assert top["score"].iloc[0] == pytest.approx(H) and top["score"].iloc[1] == pytest.approx(H)
    # english comes before java in the corpus order, so its document has the smaller global id
    assert list(zip(top["label"][:2], top["doc"][:2], top["pos"][:2])) == [("english", 1, 4), ("java", 3, 7)]
    assert top["score"].iloc[2] < H - 1e-3


def test_save_load_roundtrip_and_checks(model, corpus, tmp_path):
    stats = compute_routing_stats(model, corpus, seq_len=16, top_k=2, doc_max=True, progress=False)
    stats.save(tmp_path / "s")
    back = RoutingStats.load(tmp_path / "s", model=model, corpus=corpus)
    for name in RoutingStats._ARRAYS:
        a, b = getattr(stats, name), getattr(back, name)
        assert (a is None and b is None) or np.array_equal(a, b), name
    assert back.labels == stats.labels and back.metadata["settings"] == stats.metadata["settings"]
    with pytest.raises(StatsMetadataError, match="weights"):
        RoutingStats.load(tmp_path / "s", model=make_model(seed=5))
    with pytest.raises(StatsMetadataError, match="config"):
        RoutingStats.load(tmp_path / "s", model=make_model(seed=0, moe_topk=2))
    with pytest.raises(StatsMetadataError, match="different corpus"):
        RoutingStats.load(tmp_path / "s", corpus=stand_in_corpus(seed=1))
    with pytest.raises(StatsMetadataError, match="unit_stats"):
        UnitStats.load(tmp_path / "s")
    data = (tmp_path / "s" / "arrays.npz").read_bytes()
    (tmp_path / "s" / "arrays.npz").write_bytes(data[:-10] + b"0123456789")
    with pytest.raises(StatsMetadataError, match="sha256"):
        RoutingStats.load(tmp_path / "s")


def test_unit_stats_of_experts_equal_routing_view(model, corpus):
    rs = compute_routing_stats(model, corpus, seq_len=16, top_k=3, fire_threshold=0.05, doc_max=True,
                               token_classes=ModClasses(), token_sample=40, progress=False)
    view = rs.units(1)
    us = compute_unit_stats(model, corpus, monet_experts(model.cfg, 1), seq_len=16, top_k=3, fire_threshold=0.05,
                            token_classes=ModClasses(), token_sample=40, progress=False)
    np.testing.assert_allclose(us.act_sum, view.act_sum, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(us.fire_count, view.fire_count)
    np.testing.assert_allclose(us.doc_max, view.doc_max, rtol=1e-6)
    np.testing.assert_array_equal(us.topk_key, view.topk_key)
    np.testing.assert_allclose(us.class_act_sum, view.class_act_sum, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(us.sample_key, view.sample_key)
    np.testing.assert_allclose(us.sample_act, view.sample_act, rtol=1e-6, atol=1e-7)
    assert view.unit_label(8 * 3 + 4) == "g1:(3,4)"
    # a subset of experts; fire_threshold defaults to the unit set's
    subset = monet_experts(model.cfg, 1, [(3, 4), 7])
    subset.fire_threshold = 0.05
    sub = compute_unit_stats(model, corpus, subset, seq_len=16, top_k=0, progress=False)
    np.testing.assert_allclose(sub.act_sum, view.act_sum[:, [28, 7]], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(sub.fire_count, view.fire_count[:, [28, 7]])
    assert sub.fire_threshold == 0.05
    assert sub.unit_names == ["g1:(3,4)", "g1:(0,7)"]


def test_unit_stats_dense_neurons(corpus, tmp_path):
    torch.manual_seed(0)
    dense = stand_in_dense(seed=3)
    units = dense_neurons(dense, layer=1)
    stats = compute_unit_stats(dense, corpus, units, seq_len=16, batch_size=3, top_k=3, progress=False)
    act_sum = np.zeros((3, 24))
    dmax = np.full((15, 24), -np.inf)
    d = 0
    for li, lab in enumerate(corpus.labels):
        for doc in corpus.documents(lab):
            for start in range(0, len(doc), 16):
                w = torch.tensor(doc[start:start + 16].astype(np.int64))[None]
                _, cache = dense.run_with_cache(w, names_filter="blocks.1.mlp.hook_post", return_type=None)
                acts = cache["blocks.1.mlp.hook_post"][0][(w[0] != BOS) & (w[0] != EOS)].double().numpy()
                act_sum[li] += acts.sum(0)
                if len(acts):
                    dmax[d] = np.maximum(dmax[d], acts.max(0))
            d += 1
    np.testing.assert_allclose(stats.act_sum, act_sum, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.doc_max, dmax, rtol=1e-5, atol=1e-6)
    assert stats.kind == "neuron" and stats.n_units == 24
    assert (stats.topk_score[:, 0] == stats.doc_max.max(0)).all()
    stats.save(tmp_path / "u")
    back = UnitStats.load(tmp_path / "u", model=dense, corpus=corpus)
    np.testing.assert_array_equal(back.act_sum, stats.act_sum)


def test_merge_topk_orders_by_score_then_key():
    s = torch.tensor([[1.0, 3.0, 3.0, -math.inf, 2.0]])
    k = torch.tensor([[5, 9, 4, -1, 1]])
    ms, mk = merge_topk(s, k, 3)
    assert ms.tolist() == [[3.0, 3.0, 2.0]] and mk.tolist() == [[4, 9, 1]]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 6), st.integers(0, 40)), min_size=1, max_size=60,
                unique_by=lambda x: (x[0], x[2])),
       st.integers(1, 4), st.integers(1, 4))
def test_topk_buffer_equals_brute_force(entries, k, n_batches):
    """Streaming top-k (scores from a small set: many ties) equals sorting everything at once."""
    buf = TopKBuffer(6, k, torch.device("cpu"))
    chunks = np.array_split(np.arange(len(entries)), n_batches)
    for chunk in chunks:
        if len(chunk) == 0:
            continue
        u = torch.tensor([entries[c][0] for c in chunk])
        s = torch.tensor([entries[c][1] / 2 for c in chunk], dtype=torch.float32)
        key = torch.tensor([entries[c][2] for c in chunk])
        buf.update(u, s, key)
    for unit in range(6):
        mine = sorted(((sc / 2, key) for uu, sc, key in entries if uu == unit), key=lambda x: (-x[0], x[1]))[:k]
        got = [(float(a), int(b)) for a, b in zip(buf.score[unit], buf.key[unit]) if b >= 0]
        assert got == mine
