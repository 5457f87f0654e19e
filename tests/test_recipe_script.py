"""scripts/compare_routing_recipes.py on fake run folders: reuse of finished runs, setting
mismatches, recipe-name validation and the markdown table (no training)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from monet_interp.training.cli_args import config_from_args, parse_train_args

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_routing_recipes.py"
spec = importlib.util.spec_from_file_location("compare_routing_recipes", SCRIPT)
recipes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(recipes)

NAME = "absolute bias u=1e-2"


def script_args(out: Path) -> argparse.Namespace:
    return argparse.Namespace(corpus="data/corpus", out=str(out), model="vd", steps=150, label_power=0.5)


def fake_run(args: argparse.Namespace, name: str, **train_changes) -> Path:
    """A finished run folder of recipe ``name`` as the trainer leaves it (manifest only)."""
    out = Path(args.out) / recipes.slug(name)
    extra = [x.format(warmup=max(1, args.steps // 3)) for x in recipes.RECIPES[name]]
    train = config_from_args(parse_train_args(["--out", str(out), *recipes.base_args(args), *extra])).to_dict()
    train.update(train_changes)
    manifest = {
        "train": train, "tokens_seen": 150 * 32 * 128, "test_bpb_mean": 2.34567, "final_val_bpb_mean": 2.3,
        "train_tokens_per_s": 1234.5,
        "health": {"groups": [
            {"dead_pair_share": 0.25, "dead_row_share": 0.0, "dead_col_share": 0.125, "max_vio": 1.25,
             "mean_kept_row": 3.0, "mean_kept_col": 5.0},
            {"dead_pair_share": 0.5, "dead_row_share": 0.0625, "dead_col_share": 0.0, "max_vio": 2.0,
             "mean_kept_row": 4.0, "mean_kept_col": 4.0}]},
    }
    out.mkdir(parents=True)
    (out / "training_manifest.json").write_text(json.dumps(manifest))
    return out


def no_training(*args, **kwargs):
    raise AssertionError("the script started a training run")


def test_finished_matching_run_is_reused_without_training(tmp_path, monkeypatch):
    args = script_args(tmp_path)
    out = fake_run(args, NAME)
    monkeypatch.setattr(recipes.subprocess, "run", no_training)
    assert recipes.run_recipe(NAME, recipes.RECIPES[NAME], args) == out


def test_finished_run_with_other_settings_is_an_error(tmp_path, monkeypatch):
    args = script_args(tmp_path)
    fake_run(args, NAME, balance_target="mean")
    monkeypatch.setattr(recipes.subprocess, "run", no_training)
    with pytest.raises(SystemExit, match=r"other settings than recipe 'absolute bias u=1e-2' \(balance_target\)"):
        recipes.run_recipe(NAME, recipes.RECIPES[NAME], args)


def test_missing_run_is_trained_with_the_recipe_flags(tmp_path, monkeypatch):
    args = script_args(tmp_path)
    seen = []
    monkeypatch.setattr(recipes.subprocess, "run", lambda command, **kwargs: seen.append(command))
    name = "routing warmup (1/3 of steps)"
    out = recipes.run_recipe(name, recipes.RECIPES[name], args)
    assert out == tmp_path / "routing-warmup-1-3-of-steps"
    (command,) = seen
    assert command[1:3] == ["-m", "monet_interp.training"]
    assert command[command.index("--routing-warmup-steps") + 1] == "50"  # steps // 3
    assert command[command.index("--out") + 1] == str(out) and "--resume" in command


def test_unknown_recipe_names_are_rejected(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(recipes, "run_recipe", no_training)
    monkeypatch.setattr(sys, "argv", ["compare_routing_recipes.py", "--out", str(tmp_path), "--recipes", "aux 1e-2",
                                      "nope"])
    with pytest.raises(SystemExit) as exit_info:
        recipes.main()
    assert exit_info.value.code == 2
    assert "unknown recipes: ['nope']" in capsys.readouterr().err


def test_summary_and_table_of_a_manifest(tmp_path):
    args = script_args(tmp_path)
    out = fake_run(args, NAME)
    row = recipes.summarise(NAME, out)
    assert row == {"recipe": NAME, "tokens": 614400, "test_bpb": 2.34567, "val_bpb": 2.3, "dead_pairs": [0.25, 0.5],
                   "dead_rows": [0.0, 0.0625], "dead_cols": [0.125, 0.0], "max_vio": [1.25, 2.0], "kept": [4.0, 4.0],
                   "train_tokens_per_s": 1234.5}
    lines = recipes.table([row]).splitlines()
    assert lines[0].startswith("| recipe | test bpb | dead pairs (g0 / g1) |") and lines[1] == "|---|---|---|---|---|---|---|"
    assert lines[2] == "| absolute bias u=1e-2 | 2.346 | 25% / 50% | 0% / 6% | 12% / 0% | 1.2 / 2.0 | 4.0 / 4.0 |"
