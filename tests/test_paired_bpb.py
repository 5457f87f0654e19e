"""scripts/paired_bpb.py: the paired bootstrap on hand-made window scores, and the window picker
it shares with the trainer's final evaluation."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from monet_interp.training.metrics import spread_windows

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "paired_bpb.py"
spec = importlib.util.spec_from_file_location("paired_bpb", SCRIPT)
paired = importlib.util.module_from_spec(spec)
spec.loader.exec_module(paired)


def scores(seed: int, labels=("x", "y"), n=20) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {lab: np.stack([rng.uniform(50, 150, n), rng.uniform(100, 200, n)], 1) for lab in labels}


def test_mean_bpb_by_hand():
    windows = {"x": np.array([[2.0, 1.0], [4.0, 3.0]]), "y": np.array([[1.0, 2.0]])}
    ln2 = np.log(2)
    assert paired.mean_bpb(windows) == pytest.approx(((6 / 4) / ln2 + (1 / 2) / ln2) / 2)
    assert paired.mean_bpb(windows, {"x": np.array([1, 1]), "y": np.array([0])}) == pytest.approx(
        ((8 / 6) / ln2 + (1 / 2) / ln2) / 2)


def test_identical_models_differ_by_nothing():
    a = scores(0)
    r = paired.paired_bootstrap(a, {k: v.copy() for k, v in a.items()}, n_boot=50)
    assert r["diff"] == 0 and r["se"] == 0 and r["low"] == r["high"] == 0 and r["p_not_above"] == 1


def test_a_uniformly_worse_model_is_never_below():
    b = scores(1)
    a = {k: v * np.array([1.01, 1.0]) for k, v in b.items()}  # 1% more NLL on every window
    r = paired.paired_bootstrap(a, b, n_boot=200)
    assert r["diff"] == pytest.approx(0.01 * r["bpb_b"])
    assert r["p_not_above"] == 0 and 0 < r["low"] <= r["diff"] <= r["high"]
    # unpaired noise of the same size would hide it; pairing is what the bootstrap keeps
    noisy = paired.paired_bootstrap(a, scores(2), n_boot=200)
    assert noisy["se"] > 10 * r["se"]


def test_refuses_different_windows_and_no_draws():
    with pytest.raises(ValueError, match="same windows"):
        paired.paired_bootstrap(scores(0), scores(0, n=19))
    with pytest.raises(ValueError, match="n_boot"):
        paired.paired_bootstrap(scores(0), scores(0), n_boot=0)


def test_spread_windows():
    tokens = np.arange(41)
    rows = spread_windows(tokens, 3, 8)  # 5 windows fit; 3 spread evenly: starts 0, 16, 32
    assert rows.dtype == np.int64 and rows.shape == (3, 9)
    assert rows[:, 0].tolist() == [0, 16, 32] and rows[-1, -1] == 40
    assert spread_windows(tokens, 10, 8).shape == (5, 9)  # never more than fit
    assert spread_windows(np.arange(8), 3, 8) is None  # shorter than one window + its target
