"""Monosemanticity metrics (2x rule, entropy, detection), tables and figures, and Pygments token
types, on hand-computed cases, naive references and tiny models."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import make_model, stand_in_corpus, stand_in_dense

from monet_interp.analyses import monosemanticity as M
from monet_interp.analyses import token_types as TT
from monet_interp.data import MemoryCorpus
from monet_interp.stats import RoutingStats, UnitStats, compute_routing_stats, compute_unit_stats
from monet_interp.units import dense_neurons


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------ label metrics
def test_two_x_rule_hand_cases():
    # columns = units; rows = labels
    means = np.array([[4.0, 1.0, 0.0, 3.0, 1.0, 2.0],
                      [2.0, 1.0, 0.0, 0.0, 5.0, 1.0],
                      [1.0, 1.0, 0.0, 0.0, 1.0, 1.01]])
    spec, top, skew = M.two_x_rule(means)
    assert spec.tolist() == [True, False, False, True, True, False]
    assert top.tolist()[:2] == [0, 0] and top[3] == 0 and top[4] == 1
    assert skew[0] == 2.0 and skew[1] == 1.0 and math.isnan(skew[2]) and skew[3] == math.inf
    assert skew[4] == 5.0 and M.two_x_rule(means[:, 4:5], ratio=6.0)[0][0] == np.False_
    assert skew[5] == pytest.approx(2 / 1.01)  # 2.0 vs 1.01: just fails


def test_entropy_and_specialisation_ratio_hand_cases():
    means = np.array([[1.0, 1.0, 0.5, 0.0, 3.0],
                      [1.0, 0.0, 0.5, 0.0, 1.0],
                      [1.0, 0.0, 0.0, 0.0, 0.0]])
    h = M.normalised_entropy(means)
    assert h[0] == pytest.approx(1.0) and h[1] == pytest.approx(0.0)
    assert h[2] == pytest.approx(math.log(2) / math.log(3)) and math.isnan(h[3])
    q = np.array([0.75, 0.25])
    assert h[4] == pytest.approx(-(q * np.log(q)).sum() / math.log(3))
    sr = M.specialisation_ratio(means)
    assert sr[0] == pytest.approx(1.0) and sr[1] == pytest.approx(3.0) and sr[2] == pytest.approx(1.5)
    assert math.isnan(sr[3]) and sr[4] == pytest.approx(2.25)
    prof = M.profile(means)
    np.testing.assert_allclose(prof[:, 4], [0.75, 0.25, 0.0])


def test_label_metrics_frame():
    means = np.array([[4.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    t = M.label_metrics(means, ["python", "english"])
    assert list(t["specialised"]) == [True, False, False]
    assert t.loc[0, "label"] == "python" and t["label"][1:].isna().all()
    assert list(t["active"]) == [True, True, False]
    assert t.loc[0, "second_label"] == "english" and t.loc[0, "r_second"] == 1.0
    with pytest.raises(ValueError):
        M.label_metrics(means, ["only one"])


# ------------------------------------------------------------------------------ detection
def naive_auroc(s, y):
    pos, neg = s[y], s[~y]
    total = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return total / (len(pos) * len(neg))


def naive_best_f1(s, y):
    best = 0.0
    for tau in [-np.inf] + sorted(set(s.tolist())):
        pred = s > tau
        tp = (pred & y).sum()
        f1 = 2 * tp / (pred.sum() + y.sum()) if pred.sum() + y.sum() else 0.0
        best = max(best, f1)
    return best


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 40), st.integers(1, 4), st.integers(0, 10**6))
def test_auroc_and_f1_equal_naive(n_docs, n_units, seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, size=(n_docs, n_units)).astype(float)  # many ties
    scores[rng.random(scores.shape) < 0.2] = -np.inf  # documents without tokens
    y = rng.random(n_docs) < 0.4
    got = M.auroc(scores, y)
    if y.all() or not y.any():
        assert np.isnan(got).all()
        return
    for u in range(n_units):
        assert got[u] == pytest.approx(naive_auroc(scores[:, u], y))
    f1, thr = M.best_f1(scores, y)
    for u in range(n_units):
        assert f1[u] == pytest.approx(naive_best_f1(scores[:, u], y))
        p, r = M.precision_recall_at(scores[:, u], y, thr[u])
        pred = scores[:, u] > thr[u]
        tp = (pred & y).sum()
        assert 2 * tp / (pred.sum() + y.sum()) == pytest.approx(f1[u])  # the threshold achieves it
        assert r[0] == pytest.approx(tp / y.sum())


def test_auroc_known_values():
    y = np.array([True, True, False, False])
    assert M.auroc(np.array([4.0, 3.0, 2.0, 1.0]), y) == 1.0
    assert M.auroc(np.array([1.0, 2.0, 3.0, 4.0]), y) == 0.0
    assert M.auroc(np.array([1.0, 1.0, 1.0, 1.0]), y) == 0.5
    assert M.auroc(np.array([3.0, 1.0, 2.0, 0.0]), y) == 0.75
    p, r = M.precision_recall_at(np.array([3.0, 1.0, 2.0, 0.0]), y, 0.5)
    assert p[0] == pytest.approx(2 / 3) and r[0] == 1.0
    p, r = M.precision_recall_at(np.array([3.0, 1.0, 2.0, 0.0]), y, 10.0)
    assert math.isnan(p[0]) and r[0] == 0.0


def test_detection_metrics_long_table():
    doc_max = np.array([[5.0, 0.0], [4.0, 1.0], [0.0, 1.0], [1.0, 0.5]])
    doc_label = np.array([0, 0, 1, 1])
    det = M.detection_metrics(doc_max, doc_label, ["a", "b"])
    assert det.shape[0] == 4
    row = det[(det.unit == 0) & (det.label == "a")].iloc[0]
    assert row.auroc == 1.0 and row.best_f1 == 1.0 and row.precision == 1.0 and row.recall == 1.0
    assert 1.0 < row.best_threshold < 4.0
    det = M.detection_metrics(doc_max, doc_label, ["a", "b"], labels=[1], tau=0.75)
    row = det[det.unit == 1].iloc[0]
    assert row.label == "b" and row.precision == pytest.approx(1 / 2) and row.recall == pytest.approx(1 / 2)


# ------------------------------------------------------------------------------ tables
def synthetic_units(n_docs_per_label=6) -> UnitStats:
    """Three units over labels (python, english, java): unit 0 fires only on python documents
    (perfect detector), unit 1 everywhere alike, unit 2 never."""
    labels = ["python", "english", "java"]
    L, N = 3, 3
    doc_label = np.repeat(np.arange(L), n_docs_per_label).astype(np.int32)
    D = len(doc_label)
    doc_max = np.zeros((D, N), np.float32)
    doc_max[doc_label == 0, 0] = 2.0
    doc_max[:, 1] = 1.0
    act_sum = np.array([[50.0, 10.0, 0.0], [0.0, 10.0, 0.0], [0.0, 10.0, 0.0]])
    return UnitStats(name="toy", kind="neuron", labels=labels, label_kinds=["code", "natural", "code"],
                     tokens=np.array([100, 100, 100]), act_sum=act_sum, fire_count=(act_sum > 0).astype(np.int64) * 7,
                     fire_threshold=0.0, doc_label=doc_label, doc_index=np.arange(D) % n_docs_per_label,
                     doc_length=np.full(D, 10), doc_max=doc_max)


def test_monosemanticity_table_synthetic():
    t = M.monosemanticity_table(synthetic_units())
    assert list(t["specialised"]) == [True, False, False]
    assert t.loc[0, "label"] == "python" and t.loc[0, "auroc"] == 1.0 and t.loc[0, "best_f1"] == 1.0
    assert t.loc[1, "auroc"] == 0.5 and t.loc[1, "entropy"] == pytest.approx(1.0)
    assert t.loc[0, "best_auroc_label"] == "python" and not t.loc[2, "active"]
    code = M.monosemanticity_table(synthetic_units(), label_kind="code")  # python vs java only
    assert set(code["top_label"].dropna()) <= {"python", "java"}
    assert code.loc[0, "spec_ratio"] == pytest.approx(2.0)
    summary = M.specialisation_summary(t)
    assert summary.loc[summary.label == "python", "n_specialised"].item() == 1
    assert summary.loc[summary.label == "python", "share"].item() == pytest.approx(1 / 3)


@pytest.fixture(scope="module")
def routing():
    model = make_model(0)
    corpus = stand_in_corpus(0)
    return model, corpus, compute_routing_stats(model, corpus, seq_len=16, batch_size=4, top_k=2, doc_max=True,
                                                progress=False)


def test_expert_table_and_factor_structure(routing):
    _, _, rs = routing
    table = M.expert_table(rs, label_kind=None)
    E = rs.n_experts
    assert len(table) == rs.n_groups * E * E
    assert {"group", "i", "j", "auroc", "best_f1", "specialised", "entropy"} <= set(table.columns)
    g1 = table[table.group == 1].reset_index(drop=True)
    np.testing.assert_array_equal(g1["i"] * E + g1["j"], np.arange(E * E))
    # the table's 2x decisions are those of the label map
    label_map, names = M.factor_label_map(rs, 1)
    np.testing.assert_array_equal((label_map >= 0).reshape(-1), g1["specialised"].to_numpy())
    assert g1.loc[5, "name"] == "g1:(0,5)"
    purity = M.factor_purity(rs, 1, n_shuffles=20)
    assert set(purity["axis"]) == {"row", "col"} and len(purity) == 2 * E
    assert ((purity["purity"] >= 0) & (purity["purity"] <= 1) | purity["purity"].isna()).all()
    fig = M.factor_structure_figure(rs, 1, n_shuffles=5)
    assert fig.data[0].type == "heatmap" and np.asarray(fig.data[0].z).shape == (E, E)


def test_factor_purity_planted():
    """Rows 0-1 hold only python experts, column 3 only english ones: purity 1 there, and a random
    placement of the same labels is less pure."""
    E, L = 6, 3
    means = np.full((L, 1, E, E), 1.0)
    means[0, 0, 0, :] = 5.0
    means[0, 0, 1, :] = 5.0
    means[1, 0, 2:, 3] = 5.0
    rs = RoutingStats(labels=["python", "english", "java"], label_kinds=["code", "natural", "code"], n_groups=1,
                      n_heads=1, n_experts=E, group_layers=[[0]], tokens=np.array([1, 1, 1]), score_sum=means,
                      fire_count=np.zeros((L, 1, E, E), np.int64), head_score_sum=np.zeros((1, 1, E, E)),
                      hist_edges=np.zeros(2), hist_count=np.zeros((L, 1, 1), np.int64),
                      topk_score=np.zeros((1, E * E, 0), np.float32), topk_key=np.zeros((1, E * E, 0), np.int64),
                      doc_label=np.zeros(0, np.int32), doc_index=np.zeros(0, np.int64),
                      doc_length=np.zeros(0, np.int64), fire_threshold=0.01, top_k=0, seq_len=8, split="val")
    label_map, names = M.factor_label_map(rs, 0)
    assert (label_map[:2] == 0).all() and (label_map[2:, 3] == 1).all() and (label_map >= 0).sum() == 16
    p = M.factor_purity(rs, 0, n_shuffles=100)
    rows = p[p.axis == "row"].set_index("index")
    assert rows.loc[0, "purity"] == 1.0 and rows.loc[0, "dominant_label"] == "python"
    assert rows.loc[0, "shuffled_purity"] < 1.0
    cols = p[p.axis == "col"].set_index("index")
    assert cols.loc[3, "n_specialised"] == 6 and cols.loc[3, "dominant_label"] == "english"
    assert cols.loc[3, "purity"] == pytest.approx(4 / 6)


def test_compare_experts_with_neurons(routing):
    _, corpus, rs = routing
    dense = stand_in_dense(seed=1)
    neurons = compute_unit_stats(dense, corpus, dense_neurons(dense, 0), seq_len=16, top_k=2, progress=False)
    tables = {"MONET experts": M.expert_table(rs), "dense neurons": M.monosemanticity_table(neurons)}
    assert tables["dense neurons"]["kind"].eq("neuron").all() and len(tables["dense neurons"]) == 24
    fig = M.compare_figure(tables)
    assert len(fig.data) == 2 * len(M.METRICS)
    assert {tr.name for tr in fig.data} == set(tables)
    bars = M.specialisation_share_figure(tables)
    assert {tr.name for tr in bars.data} == set(tables)
    summary = M.summary_table(tables)
    assert list(summary["unit_set"]) == list(tables) and (summary["active"] <= 1).all()


# ------------------------------------------------------------------------------ token types
CODE = 'def f(x):\n    """doc"""\n    return x + 12  # note\n'


def test_pygments_char_and_token_classes():
    from tokenizers import Tokenizer

    from monet_interp.data import DEFAULT_TOKENIZER_PATH

    tok = Tokenizer.from_file(str(DEFAULT_TOKENIZER_PATH))
    ids, cls = TT.classify_text(CODE, "python", tok)
    enc = tok.encode(CODE, add_special_tokens=False)
    names = {CODE[a:b].strip(): TT.TOKEN_TYPES[c] if c >= 0 else None for (a, b), c in zip(enc.offsets, cls)
             if CODE[a:b].strip()}
    assert names.get("def") == "keyword" and names.get("return") == "keyword"
    assert names.get("f") == "identifier" and names.get("x") == "identifier"
    assert names.get("+") == "operator" and names.get("12") == "number"
    assert any(v == "string" for k, v in names.items() if '"' in k)
    assert any(v == "comment" for k, v in names.items() if "#" in k or "note" in k)
    assert TT.get_lexer("no-such-language") is None and TT.get_lexer("vimscript") is not None
    assert TT.type_counts(cls)["keyword"] >= 2


def code_corpus() -> MemoryCorpus:
    """Code and English texts, encoded by the committed tokenizer (texts and tokenizer kept)."""
    from tokenizers import Tokenizer

    from monet_interp.data import DEFAULT_TOKENIZER_PATH

    tok = Tokenizer.from_file(str(DEFAULT_TOKENIZER_PATH))
    text = {"python": [CODE, "import os\nprint(os.sep, 3.5)\n", "x = [1, 2]  # list\n"],
            "english": ["The cat sat on the mat.", "A short sentence, with a comma."]}
    docs = {lab: [np.array([1] + tok.encode(t, add_special_tokens=False).ids + [2]) for t in texts]
            for lab, texts in text.items()}
    return MemoryCorpus.from_documents(docs, kinds={"python": "code", "english": "natural"}, texts=text, tokenizer=tok)


def test_token_type_classes_through_the_routing_pass():
    corpus = code_corpus()
    typer = TT.PygmentsTokenTyper(corpus, split="val")
    assert typer.applies_to("python") and not typer.applies_to("english")
    doc = corpus.documents("python")[0]
    cls = typer.classes("python", 0, doc)
    assert len(cls) == len(doc) and cls[0] == -1 and cls[-1] == -1
    model = make_model(0, vocab_size=corpus.tokenizer().get_vocab_size(), max_position_embeddings=128)
    rs = compute_routing_stats(model, corpus, seq_len=32, top_k=2, token_classes=typer, token_sample=1000,
                               progress=False)
    assert rs.class_names == list(TT.TOKEN_TYPES)
    want = np.zeros(len(TT.TOKEN_TYPES), np.int64)
    for k, d in enumerate(corpus.documents("python")):
        c = typer.classes("python", k, d)
        want += np.bincount(c[c >= 0], minlength=len(want))
    np.testing.assert_array_equal(rs.class_tokens, want)
    assert rs.sample_key is not None and len(rs.sample_key) == want.sum()  # rate 1: every classified token
    t = M.token_type_table(rs.units(0))
    assert len(t) == rs.n_experts ** 2 and {"auroc", "best_f1", "specialised"} <= set(t.columns)
    assert t.loc[t["active"], "top_label"].isin(TT.TOKEN_TYPES).all()
    a = t["auroc"].dropna()
    assert len(a) and ((a >= 0) & (a <= 1)).all()
    # wrong tokenizer => a clear error, not silent misalignment
    bad = TT.PygmentsTokenTyper(corpus, tokenizer=type("T", (), {"encode": lambda self, t, add_special_tokens:
                                                                 corpus.tokenizer().encode(t[1:], add_special_tokens=False)})())
    with pytest.raises(ValueError, match="tokenizer"):
        bad.classes("python", 0, doc)


def test_no_printing(capsys, routing):
    _, _, rs = routing
    M.expert_table(rs)
    M.factor_structure_figure(rs, 0, n_shuffles=2)
    M.monosemanticity_table(synthetic_units())
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
