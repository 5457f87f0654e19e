"""scripts/plot_training.py on a synthetic history.jsonl: curves, smoothing and the SVG/HTML files."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "plot_training.py"
spec = importlib.util.spec_from_file_location("plot_training", SCRIPT)
plot_training = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plot_training)


def write_history(folder: Path, steps: int = 6, monet: bool = True) -> None:
    folder.mkdir(parents=True)
    lines = []
    for step in range(1, steps + 1):
        record = {"step": step, "lm_loss": 10.0 - step, "tokens": step * 4096}
        if monet:
            record.update(max_vio=[float(step), 2.0 * step], dead_in_batch=[0.0, 0.0])
        lines.append(record)
        if step % 3 == 0:
            lines.append({"step": step, "eval": "val", "mean_bpb": 3.0 - 0.1 * step, "bpb": {}})
            if monet:
                lines.append({"step": step, "eval": "health", "dead_pair_share": [0.1, 0.5 / step],
                              "dead_row_share": [0, 0], "dead_col_share": [0, 0], "max_vio": [1, 1]})
    (folder / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_moving_average_by_hand():
    assert plot_training.moving_average([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    assert plot_training.moving_average([5.0], 10) == [5.0]


def test_curves_read_from_history(tmp_path):
    write_history(tmp_path / "vd")
    curves = plot_training.read_curves(tmp_path / "vd", smooth=1)
    assert curves["loss"] == ([s * 4096 / 1e6 for s in range(1, 7)], [9.0, 8.0, 7.0, 6.0, 5.0, 4.0])
    assert curves["vio"][1] == [2.0 * s for s in range(1, 7)]  # worst group
    assert curves["bpb"] == ([3 * 4096 / 1e6, 6 * 4096 / 1e6], [2.7, 2.4])
    assert curves["dead"][1] == [pytest.approx(0.5 / 3), 0.1]  # worst group at each evaluation
    write_history(tmp_path / "dense", monet=False)
    assert set(plot_training.read_curves(tmp_path / "dense", smooth=3)) == {"loss", "bpb"}


def test_cli_writes_svg_and_html(tmp_path):
    write_history(tmp_path / "vd")
    write_history(tmp_path / "dense", monet=False)
    out = tmp_path / "fig" / "curves"
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "vd"), str(tmp_path / "dense"), "--out",
                           str(out), "--smooth", "2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    root = ET.fromstring(out.with_suffix(".svg").read_text())  # well-formed SVG
    lines = [e for e in root.iter() if e.tag.endswith("polyline")]
    assert len(lines) == 2 + 2 + 1 + 1  # loss and bpb for both runs; vio and dead for vd only
    assert "plotly" in out.with_suffix(".html").read_text()[:100000].lower()
    bad = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nothing"), "--out", str(out)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "no history.jsonl" in bad.stderr


@pytest.mark.parametrize("extra, message", [
    (["--smooth", "0"], "--smooth must be >= 1"),
    (["--names", "a", "b"], "--names needs one name per run"),
])
def test_cli_rejects_bad_options(tmp_path, extra, message):
    write_history(tmp_path / "vd")
    bad = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "vd"), "--out", str(tmp_path / "f"), *extra],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and message in bad.stderr
    assert not (tmp_path / "f.svg").exists()


def test_cli_reports_a_history_without_training_steps(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "history.jsonl").write_text(json.dumps({"step": 3, "eval": "val", "mean_bpb": 2.0}) + "\n")
    with pytest.raises(ValueError, match="no training steps"):
        plot_training.read_curves(tmp_path / "empty", smooth=1)
    bad = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "empty"), "--out", str(tmp_path / "f")],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [f"plot_training: error: {tmp_path / 'empty'}/history.jsonl has no "
                                               "training steps"]
