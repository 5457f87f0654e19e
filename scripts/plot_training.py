"""Training curves of one or more runs: LM loss, validation bits per byte and routing health.

    python scripts/plot_training.py RUN_DIR [RUN_DIR ...] --out docs/figures/training
    python scripts/plot_training.py runs/recipes/* --out runs/recipes/curves --smooth 10

Reads each run's ``history.jsonl`` (written by the trainer, also while it runs) and writes
``OUT.html`` (interactive plotly) and ``OUT.svg`` (static, for the README; drawn here so that no
image-export dependency is needed). Panels: training LM loss (moving average of ``--smooth``
steps) against tokens; mean validation bpb at each evaluation; the maximal load violation of the
training batches (worst routing group, moving average); the share of dead expert pairs on
validation text (worst routing group) at each evaluation.
"""

from __future__ import annotations

import argparse
import json
import sys
from html import escape
from pathlib import Path

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
PANELS = [("train LM loss (nats)", "loss"), ("validation bits per byte (mean over labels)", "bpb"),
          ("max load violation, training batches (worst group)", "vio"),
          ("dead expert pairs on validation text (worst group)", "dead")]


def moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def read_curves(run: Path, smooth: int) -> dict[str, tuple[list[float], list[float]]]:
    """{panel key: (tokens in millions, values)} of one run's history.jsonl."""
    records = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in records if "lm_loss" in r]
    if not steps:
        raise ValueError(f"{run}/history.jsonl has no training steps")
    tokens_per_step = steps[0]["tokens"] / steps[0]["step"]
    million = [r["tokens"] / 1e6 for r in steps]
    curves = {"loss": (million, moving_average([r["lm_loss"] for r in steps], smooth))}
    if any("max_vio" in r for r in steps):
        with_vio = [r for r in steps if "max_vio" in r]
        curves["vio"] = ([r["tokens"] / 1e6 for r in with_vio],
                         moving_average([max(r["max_vio"]) for r in with_vio], smooth))
    val = [r for r in records if r.get("eval") == "val"]
    if val:
        curves["bpb"] = ([r["step"] * tokens_per_step / 1e6 for r in val], [r["mean_bpb"] for r in val])
    health = [r for r in records if r.get("eval") == "health"]
    if health:
        curves["dead"] = ([r["step"] * tokens_per_step / 1e6 for r in health],
                          [max(r["dead_pair_share"]) for r in health])
    return curves


def svg_figure(runs: dict[str, dict], width: int = 980, panel_height: int = 230) -> str:
    """Four stacked line panels (shared legend) as an SVG document."""
    per_row = 5
    left, right, gap = 70, 20, 60
    top = 22 * ((len(runs) + per_row - 1) // per_row) + 20
    plot_w = width - left - right
    height = top + len(PANELS) * (panel_height + gap)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="12">', f'<rect width="{width}" height="{height}" fill="white"/>']
    for k, name in enumerate(runs):
        x, y = left + (k % per_row) * 175, 18 + 22 * (k // per_row)
        parts.append(f'<line x1="{x}" y1="{y}" x2="{x + 24}" y2="{y}" stroke="{PALETTE[k % len(PALETTE)]}" '
                     f'stroke-width="3"/><text x="{x + 30}" y="{y + 4}">{escape(name)}</text>')
    for p, (title, key) in enumerate(PANELS):
        y0 = top + p * (panel_height + gap) + 20
        series = [(n, c[key]) for n, c in runs.items() if key in c and c[key][0]]
        parts.append(f'<text x="{left}" y="{y0 - 6}" font-weight="bold">{escape(title)}</text>')
        parts.append(f'<rect x="{left}" y="{y0}" width="{plot_w}" height="{panel_height}" fill="none" stroke="#999"/>')
        if not series:
            continue
        xs = [x for _, (a, _) in series for x in a]
        ys = [y for _, (_, b) in series for y in b]
        x_lo, x_hi = 0.0, max(xs) or 1.0
        y_lo, y_hi = min(ys), max(ys)
        if y_hi - y_lo < 1e-9:
            y_hi = y_lo + 1.0
        pad = 0.05 * (y_hi - y_lo)
        y_lo, y_hi = y_lo - pad, y_hi + pad

        def sx(v: float) -> float:
            return left + (v - x_lo) / (x_hi - x_lo) * plot_w

        def sy(v: float) -> float:
            return y0 + panel_height - (v - y_lo) / (y_hi - y_lo) * panel_height

        for t in range(5):
            yv = y_lo + t * (y_hi - y_lo) / 4
            xv = x_lo + t * (x_hi - x_lo) / 4
            parts.append(f'<text x="{left - 6}" y="{sy(yv) + 4:.1f}" text-anchor="end">{yv:.3g}</text>')
            parts.append(f'<text x="{sx(xv):.1f}" y="{y0 + panel_height + 15}" text-anchor="middle">{xv:.3g}M</text>')
        for name, (a, b) in series:
            color = PALETTE[list(runs).index(name) % len(PALETTE)]
            points = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(a, b))
            parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="1.6"/>')
            if len(a) <= 30:
                parts.extend(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}"/>' for x, y in zip(a, b))
        parts.append(f'<text x="{left + plot_w / 2}" y="{y0 + panel_height + 32}" text-anchor="middle">'
                     'tokens trained</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def plotly_figure(runs: dict[str, dict]):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=len(PANELS), cols=1, subplot_titles=[t for t, _ in PANELS], vertical_spacing=0.07)
    for k, (name, curves) in enumerate(runs.items()):
        for p, (_, key) in enumerate(PANELS):
            if key in curves:
                x, y = curves[key]
                fig.add_trace(go.Scatter(x=x, y=y, name=name, legendgroup=name, showlegend=p == 0,
                                         line={"color": PALETTE[k % len(PALETTE)]}), row=p + 1, col=1)
    fig.update_xaxes(title_text="tokens trained (millions)")
    fig.update_layout(height=300 * len(PANELS), width=1000, template="plotly_white")
    return fig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders with a history.jsonl")
    parser.add_argument("--out", required=True, help="output path without extension (.html and .svg are written)")
    parser.add_argument("--smooth", type=int, default=25, help="moving-average window in steps (default 25)")
    parser.add_argument("--names", nargs="*", default=None, help="legend names (default: folder names)")
    args = parser.parse_args()
    if args.smooth < 1:
        parser.error("--smooth must be >= 1")
    missing = [str(r) for r in args.runs if not (r / "history.jsonl").is_file()]
    if missing:
        parser.error(f"no history.jsonl in: {', '.join(missing)}")
    names = args.names or [r.name for r in args.runs]
    if len(names) != len(args.runs):
        parser.error("--names needs one name per run")
    try:
        runs = {name: read_curves(run, args.smooth) for name, run in zip(names, args.runs)}
    except ValueError as err:  # a history without training steps
        print(f"plot_training: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".svg").write_text(svg_figure(runs))
    plotly_figure(runs).write_html(out.with_suffix(".html"), include_plotlyjs=True)
    print(f"wrote {out.with_suffix('.svg')} and {out.with_suffix('.html')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
