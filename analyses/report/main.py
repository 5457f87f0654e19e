"""The main job: one report on a MONET model over a labelled corpus.

    monet-interp report                       # embedded monet-vd-tiny on data/corpus -> out/report
    (CLI: monet_interp.analyses.cli.report)
    monet-interp report --model PATH --corpus DIR --out DIR --quick

Steps (each writes its own folder under ``--out``; ``index.html`` links them):
1. routing statistics (cached under ``OUT/cache/``, keyed by model, corpus and settings),
2. monosemanticity: experts vs the dense baseline's MLP neurons (tables, figures),
3. expert activation pages for the top experts of every label,
4. unlearning (delete label experts; MONET vs dense neurons and random units),
5. steering (experts vs SteerMoE-style router forcing vs SAE features vs DiffMean, and top-1
   replacement on the top-1 model).
Every table is also written as CSV.
"""

from __future__ import annotations

import hashlib
import html
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd


REPORT_SECTIONS = ("stats", "monosemanticity", "experts", "unlearning", "steering")


@dataclass
class ReportConfig:
    model: str = "monet-vd-tiny"
    corpus: str = "data/corpus"
    out: str = "out/report"
    dense: str | None = "dense-tiny"
    top1: str | None = "monet-top1-tiny"
    sections: tuple[str, ...] = REPORT_SECTIONS
    split: str = "val"
    stats_tokens_per_label: int = 6000
    seq_len: int = 128
    experts_per_label: int = 1
    expert_labels: tuple[str, ...] | None = None  # default: every label
    unlearn_labels: tuple[str, ...] | None = ("python", "c", "rust", "perl", "news_sport", "shakespeare")
    unlearn_eval_tokens: int = 256
    steer_concepts: tuple[str, ...] | None = ("python", "c", "shakespeare")
    steer_prompts: int = 6
    steer_alphas: tuple[float, ...] | None = None  # None: SteeringConfig's grid
    steer_new_tokens: int = 24
    sae_steps: int = 300  # SAE training steps per model (steering's SAE baseline)
    seed: int = 0
    threads: int | None = 1  # torch CPU threads; 1 is fastest for the tiny models on a shared 2-core machine
    progress: bool = True
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def quick(cls, **overrides: Any) -> ReportConfig:
        """Small settings for a smoke run (tests, a first look)."""
        base = dict(stats_tokens_per_label=600, seq_len=64, experts_per_label=1, unlearn_eval_tokens=64,
                    steer_prompts=2, steer_alphas=(1.0, 4.0), steer_new_tokens=12, sae_steps=60)
        base.update(overrides)
        return cls(**base)


def _cache_key(model: Any, corpus: Any, cfg: ReportConfig) -> str:
    from monet_interp.stats import corpus_fingerprint, model_fingerprint

    settings = json.dumps([cfg.split, cfg.stats_tokens_per_label, cfg.seq_len], sort_keys=True)
    digest = hashlib.sha256(f"{model_fingerprint(model)}|{corpus_fingerprint(corpus)}|{settings}".encode())
    return digest.hexdigest()[:16]


def _load_corpus(path: str, progress: bool) -> Any:
    from monet_interp.data import open_corpus

    return open_corpus(path, build_missing=True, progress=progress, log=lambda message: print(f"[report] {message}"))


def _routing_stats(model: Any, corpus: Any, cfg: ReportConfig, out: Path) -> Any:
    from monet_interp.stats import RoutingStats, compute_routing_stats

    cache = out / "cache" / f"routing_stats-{_cache_key(model, corpus, cfg)}"
    if (cache / "DONE").is_file():
        print(f"[report] routing statistics: reusing {cache}")
        return RoutingStats.load(cache, model=model, corpus=corpus)
    stats = compute_routing_stats(model, corpus, split=cfg.split, max_tokens_per_label=cfg.stats_tokens_per_label,
                                  seq_len=cfg.seq_len, top_k=16, doc_max=True, progress=cfg.progress)
    stats.save(cache)
    (cache / "DONE").write_text("ok\n")
    return stats


def _monosemanticity(model: Any, dense: Any, corpus: Any, stats: Any, cfg: ReportConfig, out: Path) -> dict:
    from monet_interp.analyses import monosemanticity as mono
    from monet_interp.stats import compute_unit_stats
    from monet_interp.units import dense_neurons

    folder = out / "monosemanticity"
    folder.mkdir(parents=True, exist_ok=True)
    tables = {"MONET experts": mono.expert_table(stats)}
    if dense is not None:
        layer = dense.cfg.num_hidden_layers // 2
        unit_stats = compute_unit_stats(dense, corpus, dense_neurons(dense, layer), split=cfg.split,
                                        max_tokens_per_label=cfg.stats_tokens_per_label, seq_len=cfg.seq_len,
                                        progress=cfg.progress)
        tables[f"dense neurons (layer {layer})"] = mono.monosemanticity_table(unit_stats)
    for name, table in tables.items():
        table.to_csv(folder / f"{name.split(' (')[0].replace(' ', '_')}.csv", index=False)
    summary = mono.summary_table(tables)
    summary.to_csv(folder / "summary.csv", index=False)
    figures = [mono.compare_figure(tables), mono.specialisation_share_figure(tables)]
    figures += [mono.factor_structure_figure(stats, g) for g in range(stats.n_groups)]
    experts = tables["MONET experts"]
    specialised = experts[experts["specialised"]]
    share = (specialised.groupby(["group", "label"]).size() / (stats.n_experts ** 2)).rename("share").reset_index() \
        if len(specialised) else pd.DataFrame(columns=["group", "label", "share"])
    share.to_csv(folder / "specialised_share.csv", index=False)
    language_experts = most_specific_experts(experts, stats, corpus, labels=corpus.labels_of_kind("code"))
    language_experts.to_csv(folder / "language_experts.csv", index=False)
    parts = ["<h2>Monosemanticity: MONET experts vs dense neurons</h2>", summary.to_html(index=False, float_format="%.3f"),
             "<h3>Most language-specific experts</h3>", language_experts.to_html(index=False, float_format="%.4f"),
             "<h3>Share of experts specialised per label (2x rule)</h3>",
             share.to_html(index=False, float_format="%.4f")]
    parts += [fig.to_html(full_html=False, include_plotlyjs=(k == 0) and "inline") for k, fig in enumerate(figures)]
    _write_page(folder / "monosemanticity.html", "Monosemanticity", "\n".join(parts))
    return {"summary": summary, "specialised_share": share, "tables": tables}


def most_specific_experts(experts: pd.DataFrame, stats: Any, corpus: Any, labels: list[str], n: int = 5,
                          split: str = "val", n_tokens: int = 5) -> pd.DataFrame:
    """The ``n`` experts specialised (2x rule) in one of ``labels`` with the largest skew r1/r2,
    among those whose mean score on their label is above the median of such experts (so that
    rarely routed experts do not win on skew alone), with the commonest tokens of their top-k
    contexts (token counts over the contexts)."""
    from collections import Counter

    tokenizer = corpus.tokenizer()
    chosen = experts[experts["specialised"] & experts["label"].isin(labels)]
    chosen = chosen[chosen["r_top"] > chosen["r_top"].median()].sort_values(["skew", "r_top"], ascending=False).head(n)
    rows = []
    for _, expert in chosen.iterrows():
        contexts = stats.top_contexts(int(expert["group"]), int(expert["i"]), int(expert["j"]))
        counts: Counter = Counter()
        for _, ctx in contexts.iterrows():
            document = corpus.documents(ctx["label"], split)[int(ctx["doc"])]
            counts[tokenizer.decode([int(document[int(ctx["pos"])])])] += 1
        rows.append({"group": int(expert["group"]), "i": int(expert["i"]), "j": int(expert["j"]),
                     "label": expert["label"], "skew": float(expert["skew"]), "r_top": float(expert["r_top"]),
                     "top_tokens": " | ".join(repr(t) for t, _ in counts.most_common(n_tokens))})
    return pd.DataFrame(rows, columns=["group", "i", "j", "label", "skew", "r_top", "top_tokens"])


def _experts(model: Any, corpus: Any, stats: Any, cfg: ReportConfig, out: Path) -> int:
    from monet_interp.analyses.report.data import build_report_data, select_top_per_label
    from monet_interp.analyses.report.html_index import write_report
    from monet_interp.analyses.report.windows import plan_report_windows

    chosen = select_top_per_label(stats, cfg.experts_per_label)
    labels = cfg.expert_labels or list(chosen)
    refs, seen = [], set()
    for label in labels:
        for ref in chosen.get(label, []):
            if ref not in seen:
                seen.add(ref)
                refs.append(ref)
    if not refs:
        print("[report] no specialised experts found for expert pages")
        return 0
    documents, windows, _ = plan_report_windows(model, corpus, split=cfg.split, ctx_len=cfg.seq_len,
                                                max_tokens_per_label=cfg.stats_tokens_per_label)
    pages = build_report_data(model, windows, refs, documents=documents, progress=cfg.progress)
    write_report(out / "experts", pages, meta={"model": cfg.model, "corpus": cfg.corpus, "split": cfg.split})
    return len(pages)


def _unlearning(model: Any, top1: Any, dense: Any, corpus: Any, cfg: ReportConfig, out: Path) -> Any:
    from monet_interp.analyses.unlearning import default_methods, run_unlearning

    labels = [lab for lab in (cfg.unlearn_labels or corpus.labels) if lab in corpus.labels]
    methods = default_methods(model, top1=top1, dense=dense)
    result = run_unlearning(model, corpus, forget=labels, methods=methods, labels=labels,
                            eval_forget_tokens=cfg.unlearn_eval_tokens, eval_tokens=cfg.unlearn_eval_tokens // 2,
                            curve_forget_tokens=256, curve_retain_tokens=64,  # a quick section, not the full run
                            seed=cfg.seed, progress=cfg.progress)
    result.save(out / "unlearning")
    return result


def _steering(model: Any, top1: Any, dense: Any, corpus: Any, cfg: ReportConfig, out: Path) -> Any:
    from monet_interp.analyses.steering import run_steering

    models = {cfg.model: model}
    methods = ["monet", "steermoe", "diffmean", "sae"]
    if top1 is not None:
        models[cfg.top1] = top1
        methods.append("top1")
    concepts = [c for c in (cfg.steer_concepts or corpus.labels) if c in corpus.labels]
    grid = {"alphas": tuple(cfg.steer_alphas)} if cfg.steer_alphas else {}
    result = run_steering(models, corpus, concepts=concepts, methods=methods, n_prompts=cfg.steer_prompts,
                          max_new_tokens=cfg.steer_new_tokens, sae_train_kwargs={"steps": cfg.sae_steps},
                          seed=cfg.seed, verbose=cfg.progress, **grid)
    result.save(out / "steering")
    return result


def _write_page(path: Path, title: str, body: str) -> None:
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                    "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
                    "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
                    "th{background:#f3f3f3}</style></head><body>" + body + "</body></html>")


def run_report(cfg: ReportConfig) -> dict[str, Any]:
    """Run every requested section and write ``cfg.out/index.html``; returns a summary dict."""
    import torch

    from monet_interp import HookedMONET
    from monet_interp.dense import HookedDense

    unknown = [s for s in cfg.sections if s not in REPORT_SECTIONS]
    if unknown:
        raise ValueError(f"unknown report sections {unknown}; choose from {REPORT_SECTIONS}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads is not None:
        if cfg.threads < 1:
            raise ValueError(f"threads must be >= 1, got {cfg.threads}")
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    started = time.perf_counter()

    def timed(name: str, fn, *args):
        t0 = time.perf_counter()
        print(f"[report] {name} ...", flush=True)
        value = fn(*args)
        cfg.timings[name] = round(time.perf_counter() - t0, 1)
        print(f"[report] {name} done in {cfg.timings[name]:.0f} s", flush=True)
        return value

    model = HookedMONET.from_pretrained(cfg.model)
    dense = HookedDense.from_pretrained(cfg.dense) if cfg.dense else None
    top1 = HookedMONET.from_pretrained(cfg.top1) if cfg.top1 else None
    corpus = _load_corpus(cfg.corpus, cfg.progress)
    summary: dict[str, Any] = {}
    links = []
    stats = timed("routing statistics", _routing_stats, model, corpus, cfg, out)
    if "monosemanticity" in cfg.sections:
        mono = timed("monosemanticity", _monosemanticity, model, dense, corpus, stats, cfg, out)
        summary["monosemanticity"] = mono["summary"]
        links.append(("monosemanticity/monosemanticity.html", "Monosemanticity: experts vs dense neurons"))
    if "experts" in cfg.sections:
        summary["expert_pages"] = timed("expert pages", _experts, model, corpus, stats, cfg, out)
        links.append(("experts/index.html", f"Expert activation pages ({summary['expert_pages']} experts)"))
    if "unlearning" in cfg.sections:
        result = timed("unlearning", _unlearning, model, top1, dense, corpus, cfg, out)
        overview = getattr(result, "overview", None)
        summary["unlearning"] = overview() if callable(overview) else overview
        links.append(("unlearning/unlearning.html", "Unlearning: deleting label experts vs baselines"))
    if "steering" in cfg.sections:
        result = timed("steering", _steering, model, top1, dense, corpus, cfg, out)
        summary["steering"] = getattr(result, "summary", None)
        links.append(("steering/steering.html", "Steering: experts vs top-1 replacement vs SAE features vs DiffMean"))
    cfg.timings["total"] = round(time.perf_counter() - started, 1)
    body = [f"<h1>MONET report: {html.escape(cfg.model)}</h1>",
            f"<p>corpus {html.escape(cfg.corpus)} ({len(corpus.labels)} labels), statistics on the "
            f"{html.escape(cfg.split)} split, {cfg.stats_tokens_per_label} tokens per label.</p><ul>"]
    body += [f"<li><a href='{href}'>{html.escape(text)}</a></li>" for href, text in links]
    body.append("</ul><h2>Timings (s)</h2>" + pd.Series(cfg.timings).to_frame("seconds").to_html())
    for name, table in summary.items():
        if isinstance(table, pd.DataFrame):
            body.append(f"<h2>{html.escape(name)}</h2>" + table.to_html(index=False, float_format="%.3f"))
    _write_page(out / "index.html", "MONET report", "\n".join(body))
    (out / "report_config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))
    print(f"[report] wrote {out / 'index.html'} in {cfg.timings['total']:.0f} s")
    for name, table in summary.items():
        if isinstance(table, pd.DataFrame):
            print(f"\n== {name}\n{table.head(20).to_string(index=False)}")
    return summary


__all__ = ["REPORT_SECTIONS", "ReportConfig", "most_specific_experts", "run_report"]
