"""Expert activation report: the data checked exactly against brute force, then the HTML and CLI.

Model: the tiny random MONET of conftest (d=32, E=8, H=2, two routing groups) with the toy
character tokenizer, plus a planted silent row: in routing group 0, bottom half SILENT_ROW is
never selected by any head (its router logit is made strongly negative through a residual
dimension that only it reads), so every expert (SILENT_ROW, j) of group 0 never fires.
Corpus stand-in: three labels with disjoint character styles.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from conftest import write_released_folder  # noqa: E402
from naive_monet import expert_output  # noqa: E402

from monet_interp import HookedMONET  # noqa: E402
from monet_interp.analyses import report as R  # noqa: E402
from monet_interp.data import CorpusSpecError  # noqa: E402

SILENT_ROW = 7


pytestmark = pytest.mark.usefixtures("one_thread")

CTX = 24
PLANTED_TEXTS = {
    "lower": ["the cat sat on the mat and then it ran away", "a quiet river runs past the old mill",
              "she reads books in the garden every day", "we walk home slowly when it rains"],
    "upper": ["THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG", "HELLO WORLD FROM A TINY MODEL",
              "STOP SHOUTING AT THE TERMINAL PLEASE", "ALL CAPS TEXT LOOKS LIKE THIS"],
    "code": ["f(a, b): g(c). h(d, e): k(x)", "run(x): y(z), w(q). p(r)", "call(f, g): (h).", "m(n): o(p, q), r(s)."],
}


def tiny_model(released_folder, decompose: str = "vertical") -> HookedMONET:
    """The conftest model with the planted silent row SILENT_ROW in routing group 0."""
    folder, cfg, state = released_folder(moe_decompose=decompose)
    state = {k: v.clone() for k, v in state.items()}
    E, H = cfg["moe_experts"], cfg["moe_heads"]
    state["model.embed_tokens.weight"][:, 0] = 4.0  # residual dimension 0 is +4 on every token ...
    state["model.layers.0.self_attn.o_proj.weight"][0, :] = 0.0  # ... and layer 0's attention leaves it alone
    w1 = state["model.layers.0.router.w1.weight"]  # rows h * E + i
    w1[:, 0] = 0.0
    for h in range(H):
        w1[h * E + SILENT_ROW] = 0.0
        w1[h * E + SILENT_ROW, 0] = -50.0  # logit of row SILENT_ROW: -50 * (positive) on every token
    write_released_folder(folder, cfg, state)
    return HookedMONET.from_pretrained(folder)


THR = R.DEFAULT_FIRE_THRESHOLD
SPECIAL = (1, 2)  # bos, eos: run, not counted


def corpus(model, ctx: int = CTX):
    docs, windows, split = R.plan_report_windows(model, PLANTED_TEXTS, ctx_len=ctx)
    assert split == "all"
    return docs, windows


def counted(window: R.Window) -> torch.Tensor:
    return ~torch.isin(torch.tensor(window.tokens), torch.tensor(SPECIAL))


_FACTORS: dict = {}


def brute_factors(model, window: R.Window, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """g_row, g_col [pos, H, E] (float64) of one window run alone (no padding), group's first layer."""
    key = (id(model), tuple(window.tokens), group)
    if key not in _FACTORS:
        layer = model.cfg.layers_of_group(group)[0]
        with torch.no_grad():
            _, cache = model.run_with_cache(torch.tensor([window.tokens]), names_filter=lambda n: "hook_g_" in n)
        _FACTORS[key] = (cache[f"blocks.{layer}.moe.hook_g_row"][0].double(),
                         cache[f"blocks.{layer}.moe.hook_g_col"][0].double())
    return _FACTORS[key]


def brute_all_scores(model, windows, group: int) -> list[torch.Tensor]:
    """Full expansion s[pos, i, j] per window at its counted positions (tiny model only)."""
    out = []
    for w in windows:
        g1, g2 = brute_factors(model, w, group)
        out.append(torch.einsum("phi,phj->pij", g1, g2)[counted(w)])
    return out


@pytest.fixture(scope="module")
def model_vd(tmp_path_factory):
    return _module_model(tmp_path_factory, "vertical")


@pytest.fixture(scope="module")
def model_hd(tmp_path_factory):
    return _module_model(tmp_path_factory, "horizontal")


def _module_model(tmp_path_factory, decompose):
    from conftest import toy_tokenizer_json
    from naive_monet import random_hf_state, tiny_config_dict

    root = tmp_path_factory.mktemp(decompose)

    def factory(seed: int = 0, **overrides):
        cfg = tiny_config_dict(**overrides)
        folder = write_released_folder(root / "ckpt", cfg, random_hf_state(cfg, seed=seed))
        toy_tokenizer_json(folder / "tokenizer.json")
        return folder, cfg, random_hf_state(cfg, seed=seed)

    return tiny_model(factory, decompose)


@pytest.fixture(params=["vertical", "horizontal"])
def model(request, model_vd, model_hd):
    return model_vd if request.param == "vertical" else model_hd


# ============================================================================ parsing, windows
def test_expert_ref_parse_and_checks(model_vd):
    ref = R.ExpertRef.parse(" 1:3:5 ")
    assert (ref.group, ref.i, ref.j, ref.flat(8), ref.slug, str(ref)) == (1, 3, 5, 29, "g1_i3_j5", "1:3:5")
    with pytest.raises(R.ReportError, match="GROUP:I:J"):
        R.ExpertRef.parse("1:3")
    with pytest.raises(R.ReportError, match="routing group 5"):
        R.check_experts(model_vd.cfg, [R.ExpertRef(5, 0, 0)])
    with pytest.raises(R.ReportError, match="j=8 out of range"):
        R.check_experts(model_vd.cfg, [R.ExpertRef(0, 0, 8)])


def test_windows_cover_documents(model_vd):
    docs, windows = corpus(model_vd, ctx=10)
    assert [d.label for d in docs] == sorted(lab for lab in PLANTED_TEXTS for _ in PLANTED_TEXTS[lab])
    for d, doc in enumerate(docs):
        text = PLANTED_TEXTS[doc.label][doc.index]
        assert doc.tokens.tolist() == [1, *model_vd.tokenizer.encode(text), 2]  # [bos, ..., eos]
        mine = [w for w in windows if w.doc == d]
        assert all(len(w.tokens) <= 10 for w in mine)
        assert [t for w in mine for t in w.tokens] == doc.tokens.tolist()
        for w in mine:
            assert all(doc.tokens[w.doc_position(p)] == t for p, t in enumerate(w.tokens))
    with pytest.raises(R.ReportError, match="max_position_embeddings"):
        R.plan_report_windows(model_vd, PLANTED_TEXTS, ctx_len=65)
    with pytest.raises(R.ReportError, match="not in the corpus"):
        R.plan_report_windows(model_vd, PLANTED_TEXTS, labels=["nope"])


def test_windows_refuse_an_empty_split_and_foreign_token_ids(model_vd):
    from monet_interp.data import MemoryCorpus

    empty = MemoryCorpus({"lower": {"all": []}, "upper": {"all": []}}, splits=("all",))
    with pytest.raises(R.ReportError, match="no tokens in split 'all'"):
        R.plan_report_windows(model_vd, empty, ctx_len=CTX)
    too_big = model_vd.cfg.vocab_size + 3
    foreign = MemoryCorpus({"lower": {"all": [[1, 5, too_big, 2]]}}, splits=("all",))
    with pytest.raises(R.ReportError, match=f"token id {too_big}, beyond the model's vocabulary"):
        R.plan_report_windows(model_vd, foreign, ctx_len=CTX)


# ============================================================================ statistics, exact
def test_stats_match_brute_force(model):
    docs, windows = corpus(model)
    experts = [R.ExpertRef(g, i, j) for g in (0, 1) for i, j in ((0, 0), (2, 5), (SILENT_ROW, 3), (4, 4))]
    stats = R.collect_expert_stats(model, windows, experts, top_k=5, batch_size=3)
    labels = sorted(PLANTED_TEXTS)
    for group in (0, 1):
        full = brute_all_scores(model, windows, group)
        for ref in (r for r in experts if r.group == group):
            st = stats[ref]
            per_window = [s[:, ref.i, ref.j] for s in full]  # counted tokens (bos/eos excluded)
            flat = torch.cat(per_window)
            assert st.n_tokens == flat.numel()
            assert st.n_fires == int((flat > THR).sum())
            assert st.score_sum == pytest.approx(float(flat.sum()), rel=1e-5, abs=1e-9)
            assert st.max_score == pytest.approx(float(flat.max()), rel=1e-5, abs=1e-12)
            assert int(st.fine_hist.sum()) == st.n_fires
            for k, lab in enumerate(labels):
                mine = torch.cat([p for p, w in zip(per_window, windows) if w.label == lab])
                assert st.label_tokens[k] == mine.numel()
                assert st.label_sum[k] == pytest.approx(float(mine.sum()), rel=1e-5, abs=1e-9)
                assert st.label_fires[k] == int((mine > THR).sum())
            # top contexts: the top-k windows by their best score, each at its best position
            best = sorted(((float(p.max()), w.index) for p, w in zip(per_window, windows) if p.numel() and p.max() > THR),
                          key=lambda c: (-c[0], c[1]))[:5]
            assert [w for _, w, _ in st.top] == [w for _, w in best]
            for (score, w, pos), (b, _) in zip(st.top, best):
                assert score == pytest.approx(b, rel=1e-5)
                g1, g2 = brute_factors(model, windows[w], group)
                assert float((g1[pos, :, ref.i] * g2[pos, :, ref.j]).sum()) == pytest.approx(b, rel=1e-5)
            # neighbours sharing row i / column j: firing and co-firing counts
            fires = flat > THR
            row = torch.cat([s[:, ref.i, :] for s in full]) > THR  # [N, E]
            col = torch.cat([s[:, :, ref.j] for s in full]) > THR
            assert st.row_fires.tolist() == row.sum(0).tolist()
            assert st.row_cofires.tolist() == (row & fires[:, None]).sum(0).tolist()
            assert st.col_cofires.tolist() == (col & fires[:, None]).sum(0).tolist()
            if group == 0 and ref.i == SILENT_ROW:
                assert st.n_fires == 0 and st.top == [] and st.row_fires.sum() == 0


def test_stats_agree_with_routing_stats_and_selection(model_vd):
    """The report's pass and monet_interp.stats.compute_routing_stats see the same tokens."""
    docs, windows = corpus(model_vd)
    rs = R.routing_stats_for(model_vd, PLANTED_TEXTS, ctx_len=CTX, batch_size=4, top_k=1)
    experts = [R.ExpertRef(g, i, j) for g in (0, 1) for i in range(8) for j in range(8)]
    stats = R.collect_expert_stats(model_vd, windows, experts, top_k=1)
    labels = sorted(PLANTED_TEXTS)
    assert rs.labels == labels
    for ref, st in stats.items():
        e = ref.flat(8)
        assert st.label_tokens.tolist() == rs.tokens.tolist()
        assert st.label_fires.tolist() == rs.fire_count[:, ref.group, ref.i, ref.j].tolist()
        np.testing.assert_allclose(st.label_sum, rs.score_sum[:, ref.group, ref.i, ref.j], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(st.head_sum, rs.head_score_sum[ref.group, :, ref.i, ref.j], rtol=1e-5, atol=1e-7)
        assert st.max_score == pytest.approx(max(float(rs.topk_score[ref.group, e, 0]), 0.0), rel=1e-5)
        if st.top:
            assert st.top[0][0] == pytest.approx(st.max_score)
    assert (rs.fire_count[:, 0, SILENT_ROW].sum() == 0) and (rs.score_sum[:, 0, SILENT_ROW].sum() == 0)
    chosen = R.select_top_per_label(rs, 2, min_fires=3)
    assert set(chosen) == set(labels)
    r = rs.mean_score()
    for k, lab in enumerate(labels):
        for ref in chosen[lab]:
            col = r[:, ref.group, ref.i, ref.j]
            top2 = np.sort(col)[::-1]
            assert np.argmax(col) == k and top2[0] >= 2 * top2[1]
            assert rs.fire_count[:, ref.group, ref.i, ref.j].sum() >= 3
        shares = [r[k, ref.group, ref.i, ref.j] / r[:, ref.group, ref.i, ref.j].sum() for ref in chosen[lab]]
        assert shares == sorted(shares, reverse=True)
    assert all(ref.group == 1 for refs in R.select_top_per_label(rs, 2, min_fires=3, groups=[1]).values() for ref in refs)


def test_label_summary_rules():
    labels = ["a", "b", "c"]
    s = R.label_summary(np.array([4.0, 2.0, 0.0]), np.array([1, 1, 1]), labels)
    assert s["means"] == [4.0, 2.0, 0.0] and s["shares"] == pytest.approx([2 / 3, 1 / 3, 0.0])
    assert s["label"] == "a" and s["top_label"] == "a"
    assert s["entropy"] == pytest.approx(-(2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 3)) / np.log(3))
    assert s["specialisation"] == pytest.approx(2.0)
    assert R.label_summary(np.array([3.0, 2.0, 0.0]), np.array([1, 1, 1]), labels)["label"] is None
    empty = R.label_summary(np.zeros(3), np.array([5, 5, 5]), labels)
    assert empty["label"] is None and empty["entropy"] is None


# ============================================================================ pages, exact
@pytest.fixture(scope="module", params=["vertical", "horizontal"])
def built(request, model_vd, model_hd):
    model = model_vd if request.param == "vertical" else model_hd
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    docs, windows = corpus(model)
    stats = R.collect_expert_stats(model, windows, [R.ExpertRef(g, i, j) for g in (0, 1) for i in range(8)
                                                    for j in range(8)], top_k=4)
    firing = max((st for st in stats.values() if st.ref.group == 0), key=lambda st: st.n_fires)
    silent = stats[R.ExpertRef(0, SILENT_ROW, 2)]
    deep = max((st for st in stats.values() if st.ref.group == 1), key=lambda st: st.n_fires)
    pages = {st.ref: R.build_expert_page(model, windows, st, documents=docs, built=[firing.ref, silent.ref, deep.ref])
             for st in (firing, silent, deep)}
    torch.set_num_threads(before)
    return model, docs, windows, stats, pages, firing.ref, silent.ref, deep.ref


def test_token_colouring_equals_scores_from_cached_g(built):
    model, docs, windows, stats, pages, firing, silent, deep = built
    for ref in (firing, deep):
        page = pages[ref]
        examples = page["top_contexts"] + [ex for iv in page["intervals"] for ex in iv["examples"]]
        assert len(page["top_contexts"]) == 4 and any(iv["examples"] for iv in page["intervals"])
        for ex in examples:
            w = windows[ex["window"]]
            g1, g2 = brute_factors(model, w, ref.group)
            span = slice(ex["start"], ex["start"] + len(ex["tokens"]))
            head = g1[span, :, ref.i] * g2[span, :, ref.j]  # [n, H]
            np.testing.assert_allclose(ex["head_scores"], head.numpy(), rtol=1e-5, atol=1e-9)
            np.testing.assert_allclose(ex["scores"], head.sum(-1).numpy(), rtol=1e-5, atol=1e-9)
            assert ex["score"] == pytest.approx(ex["scores"][ex["focus"]])
            assert ex["tokens"] == model.to_str_tokens(w.tokens[span])
            assert ex["doc_pos"] == w.doc_position(ex["pos"])
            assert docs[ex["doc"]].tokens[ex["doc_pos"]] == w.tokens[ex["pos"]]
        for iv in page["intervals"]:
            assert all(iv["lo"] < ex["score"] <= iv["hi"] + 1e-12 for ex in iv["examples"])
        assert page["summary"]["max_score"] == pytest.approx(page["top_contexts"][0]["score"], rel=1e-6)


def test_logit_effects_equal_hand_computation(built):
    model, docs, windows, stats, pages, firing, silent, deep = built
    folder = Path(model.checkpoint_path)
    from safetensors.torch import load_file

    sd = {k: v.double() for k, v in load_file(str(folder / "model.safetensors")).items()}
    cfg = json.loads((folder / "config.json").read_text())
    for ref in (firing, deep):
        page = pages[ref]
        total = torch.zeros(cfg["hidden_size"], dtype=torch.float64)
        for layer in model.cfg.layers_of_group(ref.group):
            outs = []
            for _, w, pos in stats[ref].top:
                _, cache = model.run_with_cache(torch.tensor([windows[w].tokens]),
                                                names_filter=lambda n: n.endswith("ln2.hook_normalized"))
                x = cache[f"blocks.{layer}.ln2.hook_normalized"][0, pos].double() * sd[
                    f"model.layers.{layer}.post_attention_layernorm.weight"]
                outs.append(expert_output(x, sd, f"model.layers.{layer}.", cfg, ref.i, ref.j))
            total += torch.stack(outs).mean(0)
        logits = (sd["lm_head.weight"] @ total).numpy()  # W_U^T d, no final norm
        le = page["logit_effects"]
        order = np.argsort(-logits, kind="stable")
        assert [r["id"] for r in le["positive"]] == order[:10].tolist()
        assert [r["id"] for r in le["negative"]] == order[::-1][:10].tolist()
        for row in le["positive"] + le["negative"]:
            assert row["value"] == pytest.approx(logits[row["id"]], rel=1e-5, abs=1e-7)
        assert le["direction_norm"] == pytest.approx(float(total.norm()), rel=1e-5)
        assert le["layers"] == model.cfg.layers_of_group(ref.group)
    assert pages[silent]["logit_effects"] is None


def test_ablation_zero_when_silent_nonzero_when_firing(built):
    from monet_interp.editing import ExpertEdit, edit_experts

    model, docs, windows, stats, pages, firing, silent, deep = built
    quiet = pages[silent]["ablation"]
    assert quiet["windows"] == "fallback" and quiet["n_positions"] > 0
    assert quiet["max_abs_delta_loss"] <= 1e-6 and abs(quiet["mean_delta_loss"]) <= 1e-7
    assert quiet["mean_delta_loss_at_top"] is None
    for ref in (firing, deep):
        a = pages[ref]["ablation"]
        assert a["windows"] == "top contexts" and a["n_windows"] == len(stats[ref].top)
        deltas, at_top = [], []
        for _, w, pos in stats[ref].top:
            tokens = torch.tensor([windows[w].tokens])
            with torch.no_grad():
                clean = model(tokens, return_type="loss", loss_per_token=True)[0]
                with edit_experts(model, [ExpertEdit(ref.i, ref.j, "prune", group=ref.group)]):
                    pruned = model(tokens, return_type="loss", loss_per_token=True)[0]
            deltas.append(pruned - clean)
            if pos < tokens.shape[1] - 1:
                at_top.append(float(pruned[pos] - clean[pos]))
        expected = torch.cat(deltas)
        assert a["n_positions"] == expected.numel()
        assert a["mean_delta_loss"] == pytest.approx(float(expected.mean()), rel=1e-4, abs=1e-7)
        assert a["mean_delta_loss_at_top"] == pytest.approx(float(np.mean(at_top)), rel=1e-4, abs=1e-7)
        assert a["max_abs_delta_loss"] > 1e-4  # pruning a firing expert changes the loss


def test_neighbours_and_labels_in_page(built):
    model, docs, windows, stats, pages, firing, silent, deep = built
    page = pages[firing]
    st = stats[firing]
    assert len(page["neighbours"]["row"]) == 7 and len(page["neighbours"]["col"]) == 7
    for row in page["neighbours"]["row"]:
        assert row["i"] == firing.i and row["j"] != firing.j
        assert row["coactivation"] == pytest.approx(st.row_cofires[row["j"]] / st.n_fires)
    for row in page["neighbours"]["col"]:
        assert row["j"] == firing.j and row["i"] != firing.i
    co = [r["coactivation"] for r in page["neighbours"]["row"]]
    assert co == sorted(co, reverse=True)
    per_label = page["label"]["per_label"]
    assert [r["label"] for r in per_label] == sorted(PLANTED_TEXTS)
    assert sum(r["n_tokens"] for r in per_label) == page["summary"]["n_tokens"]
    assert sum(page["summary"]["head_share"]) == pytest.approx(1.0)
    assert page["summary"]["density"] == pytest.approx(st.n_fires / st.n_tokens)
    assert sum(page["histogram"]["counts"]) == st.n_fires
    assert page["histogram"]["edges"][-1] >= st.max_score


# ============================================================================ HTML
def test_html_has_every_section_and_index_lists_every_expert(built, tmp_path):
    model, docs, windows, stats, pages, firing, silent, deep = built
    ordered = [pages[r] for r in sorted(pages)]
    index = R.write_report(tmp_path / "out", ordered, {"model": "tiny", "facts": {"experts": 3}})
    html = index.read_text()
    slugs = re.findall(r'<tr data-slug="([^"]+)"', html)
    assert sorted(slugs) == sorted(p["ref"]["slug"] for p in ordered)
    for href in re.findall(r'<a href="(experts/[^"]+)"', html):
        assert (tmp_path / "out" / href).is_file()
    assert "<script src=" not in html and "http" not in html.split("</style>")[1]  # no CDN, nothing remote
    assert (tmp_path / "out" / R.PLOTLY_ASSET).stat().st_size > 1_000_000
    for page in ordered:
        text = (tmp_path / "out" / "experts" / f"{page['ref']['slug']}.html").read_text()
        for section in R.PAGE_SECTIONS:
            assert f'<section id="{section}"' in text, section
        assert text.count('class="plotly-graph-div"') == 3
        assert f'src="../{R.PLOTLY_ASSET}"' in text and "cdn" not in text.lower()
        assert len(re.findall(r'class="tok( focus)?"', text)) == sum(len(ex["tokens"]) for ex in page["top_contexts"]) + sum(
            len(ex["tokens"]) for iv in page["intervals"] for ex in iv["examples"])
        data = json.loads((tmp_path / "out" / "experts" / f"{page['ref']['slug']}.json").read_text())
        assert data == json.loads(json.dumps(page))
    silent_html = (tmp_path / "out" / "experts" / f"{silent.slug}.html").read_text()
    assert "never fired" in silent_html
    inline = R.render_expert_page(pages[firing], plotly="inline")
    assert "../assets" not in inline and len(inline) > 1_000_000


def test_render_escapes_tokens():
    example = {"tokens": ["<b>", "\n", ""], "scores": [1.0, 0.0, 0.5], "head_scores": [[1.0], [0.0], [0.5]], "focus": 0}
    out = R.render_tokens(example, 1.0)
    assert "<b>" not in out and "&lt;b&gt;" in out and "\u21b5" in out and "\u2205" in out
    assert out.count('class="tok') == 3 and 'class="tok focus"' in out


# ============================================================================ CLI
def _cli(argv):
    from monet_interp.analyses.cli.experts import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_builds_report_from_text_folder(model_vd, tmp_path, capsys):
    corpus_dir = tmp_path / "texts"
    for label, texts in PLANTED_TEXTS.items():
        (corpus_dir / label).mkdir(parents=True)
        for k, text in enumerate(texts):
            (corpus_dir / label / f"{k:02d}.txt").write_text(text)
    folder = model_vd.checkpoint_path
    args = _cli(["experts", "--model", folder, "--corpus", str(corpus_dir), "--out", str(tmp_path / "a"),
                 "--experts", "0:1:2", "1:0:0", "--ctx-len", "24", "--top-k", "3", "--no-progress"])
    args.func(args)
    rows = json.loads((tmp_path / "a" / "report.json").read_text())["experts"]
    assert [(r["group"], r["i"], r["j"]) for r in rows] == [(0, 1, 2), (1, 0, 0)]
    assert (tmp_path / "a" / "experts" / "g0_i1_j2.html").is_file()
    args = _cli(["experts", "--model", folder, "--corpus", str(corpus_dir), "--out", str(tmp_path / "b"),
                 "--top-per-label", "1", "--min-fires", "2", "--ctx-len", "24", "--no-progress"])
    args.func(args)
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert 1 <= len(report["experts"]) <= 3 and all(r["label"] for r in report["experts"])
    assert "wrote" in capsys.readouterr().out


def test_cli_errors_are_clear(model_vd, tmp_path):
    from monet_interp.analyses.cli.common import CliError

    folder = model_vd.checkpoint_path
    with pytest.raises(SystemExit):
        _cli(["experts", "--model", folder, "--corpus", "x", "--out", "y", "--experts", "0-1-2"])
    (tmp_path / "texts" / "a").mkdir(parents=True)
    (tmp_path / "texts" / "a" / "0.txt").write_text("abc def")
    args = _cli(["experts", "--model", folder, "--corpus", str(tmp_path / "texts"), "--out", str(tmp_path / "o"),
                 "--experts", "0:9:0", "--no-progress"])
    with pytest.raises(CliError, match="i=9 out of range"):
        args.func(args)
    args = _cli(["experts", "--model", folder, "--corpus", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                 "--experts", "0:1:0", "--no-progress"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        args.func(args)
    (tmp_path / "empty").mkdir()
    args = _cli(["experts", "--model", folder, "--corpus", str(tmp_path / "empty"), "--out", str(tmp_path / "o"),
                 "--experts", "0:1:0", "--no-progress"])
    with pytest.raises(CorpusSpecError, match="neither a built corpus"):
        args.func(args)
    args = _cli(["experts", "--model", folder, "--corpus", str(tmp_path / "texts"), "--out", str(tmp_path / "o"),
                 "--ctx-len", "9999", "--no-progress"])
    with pytest.raises(CliError, match="max_position_embeddings"):
        args.func(args)
