"""The ``monet-interp`` command line end to end: every subcommand on the embedded tiny models and a
small corpus built (through the CLI) from a fake source tree, and bad input for each of them.

Subcommands run in-process through ``cli.main`` (one import of the stack); one test runs the
installed entry point in a subprocess to check exit codes and that no traceback reaches users.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from fake_sources import make_tree
from monet_interp import HookedMONET
from monet_interp.analyses.cli import build_parser, main
from monet_interp.editing import EditSet, ExpertEdit

LABELS = ["python", "c", "java", "perl", "news_business", "news_sport", "manpages"]
SUBCOMMANDS = ["demo", "corpus", "train", "stats", "experts", "edit", "unlearn", "steer", "report"]


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``monet-interp ARGV``; argparse's SystemExit counts as an exit."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 7-label corpus encoded with the committed tokenizer (that of the embedded models)."""
    from monet_interp.data.corpus import build_corpus

    root = tmp_path_factory.mktemp("cli")
    make_tree(root / "tree")
    build_corpus(root / "corpus", labels=LABELS, sources_root=root / "tree", val_fraction=0.25, test_fraction=0.25,
                 progress=False)
    return root / "corpus"


@pytest.fixture(scope="module")
def vd() -> HookedMONET:
    return HookedMONET.from_pretrained("monet-vd-tiny")


def test_help_names_every_subcommand(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0
    for name in SUBCOMMANDS:
        assert name in out
    for name in SUBCOMMANDS:
        code, out, _ = run_cli([name, "--help"], capsys)
        assert code == 0 and "usage: monet-interp " + name in out
    assert run_cli([], capsys)[0] == 2  # no subcommand: help and exit 2


def test_corpus_build(tmp_path, capsys):
    make_tree(tmp_path / "tree")
    code, out, _ = run_cli(["corpus", "build", "--out", tmp_path / "c", "--sources-root", tmp_path / "tree",
                            "--labels", "python,perl", "--quiet"], capsys)
    assert code == 0 and "wrote" in out
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert list(manifest["labels"]) == ["python", "perl"]


def test_demo_prints_routing_of_the_text(vd, capsys):
    code, out, _ = run_cli(["demo", "--text", "def f(x):\n    return x", "--show-tokens", "3"], capsys)
    assert code == 0
    tokens = vd.to_tokens("def f(x):\n    return x")
    loss = vd(tokens, return_type="loss").item()
    assert f"{tokens.shape[1]} tokens, next-token loss {loss:.3f} nats" in out
    assert out.count("top expert (i=") == 3 * vd.cfg.num_routers


def test_train_writes_a_loadable_model(corpus_dir, tmp_path, capsys):
    out_dir = tmp_path / "run"
    code, out, _ = run_cli(["train", "--model", "vd", "--corpus", corpus_dir, "--out", out_dir, "--steps", "3",
                            "--batch-size", "2", "--seq-len", "16", "--d-model", "32", "--n-layers", "2",
                            "--n-heads", "2", "--moe-experts", "8", "--moe-heads", "2", "--moe-dim", "4",
                            "--moe-topk", "2", "--moe-groups", "1", "--eval-every", "100", "--eval-batches", "1",
                            "--eval-batch-size", "2", "--test-windows", "1", "--health-batches", "1",
                            "--max-position-embeddings", "64", "--quiet"], capsys)
    assert code == 0 and "wrote" in out
    model = HookedMONET.from_pretrained(out_dir)
    assert (model.cfg.hidden_size, model.cfg.num_hidden_layers, model.cfg.moe_experts) == (32, 2, 8)
    assert model.cfg.vocab_size == vd_vocab(corpus_dir)


def vd_vocab(corpus_dir: Path) -> int:
    from monet_interp.data.corpus import Corpus

    return Corpus.load(corpus_dir).vocab_size


def test_stats_saves_reloadable_statistics_and_expert_table(vd, corpus_dir, tmp_path, capsys):
    from monet_interp.data.corpus import Corpus
    from monet_interp.stats import RoutingStats

    out_dir = tmp_path / "stats"
    code, out, _ = run_cli(["stats", "--corpus", corpus_dir, "--out", out_dir, "--labels", "python", "perl",
                            "--tokens-per-label", "300", "--seq-len", "64", "--no-progress"], capsys)
    assert code == 0
    corpus = Corpus.load(corpus_dir)
    stats = RoutingStats.load(out_dir, model=vd, corpus=corpus)
    assert list(stats.labels) == ["python", "perl"]
    experts = pd.read_csv(out_dir / "experts.csv")
    assert len(experts) == vd.cfg.num_routers * vd.cfg.moe_experts ** 2
    # the table's "active" flag is exactly "some label has a non-zero mean score" in the saved stats
    mean = stats.mean_score()  # [label, group, E, E]
    active = (mean.sum(0) > 0).reshape(-1)
    assert experts.sort_values(["group", "i", "j"])["active"].to_numpy().tolist() == active.tolist()
    assert f"{stats.total_tokens:,} tokens over 2 labels" in out
    assert f"group 0: routed (active) {active[: vd.cfg.moe_experts ** 2].mean():.1%}" in out


def test_experts_builds_pages(corpus_dir, tmp_path, capsys):
    code, out, _ = run_cli(["experts", "--corpus", corpus_dir, "--out", tmp_path / "pages", "--experts", "0:1:2",
                            "1:3:4", "--labels", "python", "c", "--max-tokens-per-label", "300", "--ctx-len", "64",
                            "--no-progress"], capsys)
    assert code == 0 and "wrote 2 expert pages" in out
    index = (tmp_path / "pages" / "index.html").read_text()
    assert "(0, 1, 2)" in index or "0:1:2" in index or "g0" in index


def test_edit_reports_the_edited_losses(vd, corpus_dir, tmp_path, capsys):
    prompt = "def main():\n    return 1"
    edits = EditSet([ExpertEdit(1, 2, "set", value=3.0, group=0), ExpertEdit(5, 5, "prune", group=1)])
    path = tmp_path / "edits.json"
    edits.to_json(path)
    code, out, _ = run_cli(["edit", "--edits", path, "--prompt", prompt, "--max-new-tokens", "4", "--corpus",
                            corpus_dir, "--labels", "python", "perl", "--tokens-per-label", "128", "--seq-len", "32",
                            "--out", tmp_path / "out"], capsys)
    assert code == 0
    assert "2 edits: set 1, prune 1; scopes group 0 (1), group 1 (1)" in out
    tokens = vd.to_tokens(prompt)
    with torch.no_grad():
        before = vd(tokens, return_type="loss").item()
        with vd.edit_experts(edits):
            after = vd(tokens, return_type="loss").item()
    assert f"loss {before:.4f} -> {after:.4f}" in out and abs(after - before) > 1e-3
    prompts = pd.read_csv(tmp_path / "out" / "prompts.csv")
    assert prompts["delta_loss"].iloc[0] == pytest.approx(after - before, abs=1e-6)
    table = pd.read_csv(tmp_path / "out" / "edit_effect.csv", index_col=0)
    assert list(table.index) == ["python", "perl"]
    assert (table["delta_loss"] - (table["loss_after"] - table["loss_before"])).abs().max() < 1e-9
    assert EditSet.from_json(tmp_path / "out" / "edits.json") == edits


def test_unlearn_runs_on_the_small_corpus(corpus_dir, tmp_path, capsys):
    code, out, _ = run_cli(["unlearn", "--forget", "python", "--labels", "python,c,perl", "--corpus", corpus_dir,
                            "--out", tmp_path / "u", "--methods", "2x,random", "--no-neurons", "--no-sae",
                            "--seq-len", "32", "--stat-tokens", "256", "--eval-forget-tokens", "64",
                            "--eval-tokens", "32", "--curve-forget-tokens", "32", "--curve-retain-tokens", "32",
                            "--no-html", "--quiet"], capsys)
    assert code == 0
    written = {p.name for p in (tmp_path / "u").iterdir()}
    assert any(name.endswith(".csv") for name in written) and "share_curve.csv" in written
    table = (tmp_path / "u" / "README_table.md").read_text()
    assert "## Goal: some MONET expert method removes the label" in table and "| python | " in table


def test_steer_generate_uses_the_run_selection(corpus_dir, capsys):
    """steer generate picks its units like steer run (same windows, same choose_interventions)."""
    from monet_interp import HookedMONET
    from monet_interp.analyses import steering as S
    from monet_interp.analyses.cli.steering import config_from_args, register
    from monet_interp.analyses.steering.methods import choose_interventions
    from monet_interp.analyses.steering.texts import statistics_windows
    from monet_interp.data import open_corpus

    argv = ["steer", "generate", "--model", "monet-vd-tiny", "--corpus", corpus_dir, "--concept", "python",
            "--against", "c", "--method", "steermoe", "--alpha", "1", "--prompt", "def", "--max-new-tokens", "2",
            "--stat-windows", "2", "--stat-tokens", "16", "--rank", "skew"]
    code, out, _ = run_cli(argv, capsys)
    assert code == 0 and "--- steermoe alpha=1" in out
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    cfg = config_from_args(parser.parse_args([str(a) for a in argv]))
    corpus, model = open_corpus(corpus_dir, verify=False), HookedMONET.from_pretrained("monet-vd-tiny")
    windows = statistics_windows(lambda l: corpus.texts(l, "train", 4 * cfg.stat_windows), ["python", "c"], cfg,
                                 model._require_tokenizer().encode)
    stats = S.collect_label_stats(model, windows, batch_size=cfg.batch_size)
    expected = choose_interventions(model, stats, windows, "python", ["c"], ["steermoe"], cfg, {})["steermoe"]
    assert f"intervention: {expected.describe()}" in out
    code, _, err = run_cli([*argv[:2], "--model", "dense-tiny", *argv[4:]], capsys)
    assert code == 2 and "needs a MONET model" in err


def test_steer_run_writes_tables(corpus_dir, tmp_path, capsys):
    code, out, _ = run_cli(["steer", "run", "--models", "monet-vd-tiny", "--corpus", corpus_dir, "--concepts",
                            "python", "perl", "--methods", "monet", "diffmean", "--alphas", "1", "--n-prompts", "2",
                            "--prompt-tokens", "8", "--max-new-tokens", "4", "--stat-windows", "2", "--stat-tokens",
                            "32", "--kl-windows", "1", "--out", tmp_path / "s", "--quiet"], capsys)
    assert code == 0 and "Harmonic mean" in out
    summary = pd.read_csv(tmp_path / "s" / "summary.csv")
    assert set(summary["method"]) == {"monet", "diffmean"} and set(summary["concept"]) == {"python", "perl"}
    code, out, _ = run_cli(["steer", "table", "--run", tmp_path / "s", "--digits", "3"], capsys)
    assert code == 0
    row = summary[(summary["method"] == "diffmean") & (summary["concept"] == "perl")].iloc[0]
    assert f"{row['concept_score']:.3f} / {row['fluency']:.3f} / {row['harmonic']:.3f} / {row['kl']:.3f}" in out


def test_report_writes_every_section_and_reuses_statistics(corpus_dir, tmp_path, capsys):
    out_dir = tmp_path / "report"
    argv = ["report", "--corpus", corpus_dir, "--out", out_dir, "--quick", "--no-progress"]
    code, out, _ = run_cli(argv, capsys)
    assert code == 0
    index = (out_dir / "index.html").read_text()
    pages = ["monosemanticity/monosemanticity.html", "experts/index.html", "unlearning/unlearning.html",
             "steering/steering.html"]
    for page in pages:
        assert f"href='{page}'" in index and (out_dir / page).is_file(), page
    for table in ["monosemanticity/summary.csv", "monosemanticity/language_experts.csv", "steering/summary.csv"]:
        assert (out_dir / table).is_file(), table
    assert any(p.suffix == ".csv" for p in (out_dir / "unlearning").iterdir())
    steering = pd.read_csv(out_dir / "steering" / "summary.csv")
    assert {"monet", "steermoe", "diffmean", "top1", "sae"} <= set(steering["method"])
    # second run, statistics only: the cached routing statistics are reused
    code, out, _ = run_cli([*argv, "--sections", "stats"], capsys)
    assert code == 0 and "routing statistics: reusing" in out


def readme_python_blocks() -> list[str]:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = text.split("```python\n")[1:]
    return [b.split("```", 1)[0] for b in blocks]


@pytest.mark.parametrize("index", range(len(readme_python_blocks())))
def test_readme_python_examples_run(index, corpus_dir, monkeypatch):
    """Every ```python block of the README runs as written (its corpus: the small test corpus)."""
    code = readme_python_blocks()[index].replace('"data/corpus"', repr(str(corpus_dir)))
    monkeypatch.chdir(corpus_dir.parent)
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "readme"})


@pytest.mark.parametrize("argv, message", [
    (["demo", "--model", "/no/such/checkpoint"], "/no/such/checkpoint"),
    (["corpus", "build", "--labels", "klingon"], "unknown corpus label"),
    (["train", "--corpus", "/no/such/corpus", "--out", "{tmp}/t", "--steps", "1"], "/no/such/corpus"),
    (["stats", "--corpus", "/no/such/corpus", "--out", "{tmp}/s"], "/no/such/corpus"),
    (["stats", "--model", "dense-tiny", "--corpus", "{corpus}", "--out", "{tmp}/s"], "model_type"),
    (["stats", "--corpus", "{corpus}", "--out", "{tmp}/s", "--labels", "klingon"], "klingon"),
    (["experts", "--corpus", "{corpus}", "--out", "{tmp}/e", "--experts", "0:99:2"], "99"),
    (["edit", "--edits", "{tmp}/missing.json", "--prompt", "x y"], "does not exist"),
    (["edit", "--edits", "{tmp}/bad.json", "--prompt", "x y"], "not valid JSON"),
    (["edit", "--edits", "{tmp}/range.json", "--prompt", "x y"], "out of range"),
    (["edit", "--edits", "{tmp}/range.json"], "nothing to measure"),
    (["edit", "--edits", "{tmp}/empty.json", "--prompt", "x y"], "holds no edits"),
    (["edit", "--edits", "{tmp}/ok.json", "--prompt", ""], "single token"),
    (["edit", "--edits", "{tmp}/ok.json", "--corpus", "{corpus}", "--labels", "klingon"], "klingon"),
    (["edit", "--edits", "{tmp}/ok.json", "--corpus", "{corpus}", "--split", "dev"], "unknown split 'dev'"),
    (["edit", "--edits", "{tmp}/ok.json", "--corpus", "{corpus}", "--seq-len", "100000"], "exceeds"),
    (["stats", "--corpus", "{corpus}", "--out", "{tmp}/s", "--top-k", "-1"], "--top-k"),
    (["stats", "--corpus", "{corpus}", "--out", "{tmp}/s", "--seq-len", "100000"], "exceeds"),
    (["report", "--corpus", "{corpus}", "--out", "{tmp}/r", "--threads", "0"], "must be >= 1"),
    (["unlearn", "--forget", "klingon", "--corpus", "{corpus}", "--out", "{tmp}/u"], "klingon"),
    (["steer", "run", "--models", "monet-vd-tiny", "--corpus", "{corpus}", "--concepts", "klingon"], "klingon"),
    (["steer", "run", "--models", "monet-vd-tiny", "--corpus", "{corpus}", "--methods", "magic"], "magic"),
    (["steer", "table", "--run", "{tmp}"], "not a saved steering run"),
    (["report", "--corpus", "{corpus}", "--out", "{tmp}/r", "--sections", "vibes"], "vibes"),
    (["frobnicate"], "frobnicate"),
])
def test_bad_input_gives_a_clear_message_and_exit_2(argv, message, corpus_dir, tmp_path, capsys):
    (tmp_path / "bad.json").write_text("[{\"i\": 1,")
    EditSet([ExpertEdit(999, 0, "prune", group=0)]).to_json(tmp_path / "range.json")
    EditSet([ExpertEdit(1, 2, "prune", group=0)]).to_json(tmp_path / "ok.json")
    (tmp_path / "empty.json").write_text("[]")
    argv = [a.format(tmp=tmp_path, corpus=corpus_dir) for a in argv]
    code, out, err = run_cli(argv, capsys)
    assert code == 2, (out, err)
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("launcher", ["entry point", "python -m"])
def test_entry_point_exit_code_without_traceback(launcher, tmp_path):
    script = Path(sys.executable).parent / "monet-interp"
    if launcher == "entry point" and not script.is_file():
        pytest.skip("the monet-interp console script is not installed beside this python")
    command = [str(script)] if launcher == "entry point" else [sys.executable, "-m", "monet_interp.analyses.cli"]
    result = subprocess.run([*command, "edit", "--edits", str(tmp_path / "none.json"), "--prompt", "x y"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "monet-interp edit: error: edit file" in result.stderr and "Traceback" not in result.stderr


def test_parser_subcommands_are_complete():
    parser = build_parser()
    choices = next(a for a in parser._subparsers._group_actions).choices
    assert set(SUBCOMMANDS) <= set(choices)


def test_unlearn_defaults_are_run_unlearnings():
    """The CLI and the library default to the same sweep (UnlearningConfig), whose evaluation
    sizes resolve a retain budget of 0.5 points (512 test tokens of every other label)."""
    from dataclasses import fields

    from monet_interp.analyses.unlearning import UnlearningConfig

    args = build_parser().parse_args(["unlearn", "--out", "x"])
    config = UnlearningConfig()
    shared = [f.name for f in fields(UnlearningConfig) if hasattr(args, f.name)]
    assert {"eval_tokens", "curve_retain_tokens", "retain_budget", "fractions", "seed"} <= set(shared)
    assert {name: getattr(args, name) for name in shared} == {name: getattr(config, name) for name in shared}
    assert (config.eval_forget_tokens, config.eval_tokens) == (2048, 512)
