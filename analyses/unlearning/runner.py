"""The sweep: for every forget label and method, select units, walk the method's curve on the
selection split, and measure the operating point on the evaluation split against the clean model."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from monet_interp.analyses.unlearning.config import METRICS, UnlearningConfig, UnlearningError, resolve_labels
from monet_interp.analyses.unlearning.methods import Method, resolve_methods
from monet_interp.analyses.unlearning.result import UnlearningResult
from monet_interp.analyses.unlearning.rules import (budget_point, forget_retain, rank_units, ratio_scores,
                                                    refine_target, select_2x, select_random, select_ratio)
from monet_interp.analyses.unlearning.sweep import Sweep, default_byte_lengths, use_routing_stats
from monet_interp.units import model_name


_DEFAULTS = UnlearningConfig()  # the keyword defaults below are the config's


def run_unlearning(
    model: Any,
    corpus: Any,
    forget: str | Sequence[str] | None = None,
    methods: Sequence[str | Method] = ("2x", "ratio", "random"),
    *,
    labels: str | Sequence[str] | None = None,
    statistic: str = _DEFAULTS.statistic,
    fractions: Sequence[float] = _DEFAULTS.fractions,
    twox_prefixes: Sequence[float] = (),
    ratio_eps: float = _DEFAULTS.ratio_eps,
    iter_step: float = _DEFAULTS.iter_step,
    iter_steps: int = _DEFAULTS.iter_steps,
    iter_stat_tokens: int = _DEFAULTS.iter_stat_tokens,
    retain_budget: float = _DEFAULTS.retain_budget,
    stop_after_budget: float | None = _DEFAULTS.stop_after_budget,
    refine_steps: int = _DEFAULTS.refine_steps,
    seq_len: int = _DEFAULTS.seq_len,
    stat_tokens: int = _DEFAULTS.stat_tokens,
    eval_forget_tokens: int = _DEFAULTS.eval_forget_tokens,
    eval_tokens: int = _DEFAULTS.eval_tokens,
    curve_forget_tokens: int = _DEFAULTS.curve_forget_tokens,
    curve_retain_tokens: int = _DEFAULTS.curve_retain_tokens,
    skip_common: int = _DEFAULTS.skip_common,
    batch_size: int = _DEFAULTS.batch_size,
    stat_split: str = _DEFAULTS.stat_split,
    select_split: str = _DEFAULTS.select_split,
    eval_split: str = _DEFAULTS.eval_split,
    byte_lengths: torch.Tensor | str | None = "auto",
    seed: int = _DEFAULTS.seed,
    routing_stats: Any = None,
    progress: bool = False,
) -> UnlearningResult:
    """Forget each label of ``forget`` with each method; measure every label (see the module docstring).

    model: the MONET model the rule-name methods ("2x", "ratio", "ratio-iter", "random") act on
        (may be None when every method is a Method object). corpus: a Corpus (or MemoryCorpus).
    forget: labels to forget (None = every label of ``labels``; "code" / "natural" by kind).
    labels: the labels measured (table columns) and used as rivals / retain set (None = all).
    methods: rule names and/or :class:`Method` objects (see :func:`default_methods`).
    statistic: "mean" or "freq", for methods that do not set their own.
    fractions: curve grid (fractions of all units) of the ratio rule; twox_prefixes: optional
        curve points of the 2x rule (fractions of its set, most skewed first; the full set is then
        also a curve point); iter_step / iter_steps: the iterative rule (iter_stat_tokens per label
        for its recomputed statistics).
    retain_budget: retain top-1 drop (points) allowed at a curve method's operating point;
        stop_after_budget: stop a curve once the retain drop exceeds this multiple of the budget;
        refine_steps: extra curve points (geometric bisection) between the operating point and the
        next point over the budget, so that no method is favoured by where the grid falls.
    Token budgets per label (bounded, so CPU runs stay cheap): stat_tokens (statistics, train),
        curve_forget_tokens / curve_retain_tokens (curves, val: the forgotten label / each other
        label), eval_forget_tokens / eval_tokens (operating point, test: the forgotten label /
        each other label). seq_len: window length.
    byte_lengths: [vocab] UTF-8 bytes per token for bits per byte ("auto": from the corpus
        tokenizer via monet_interp.evaluation.token_byte_lengths; None: the corpus
        manifest's bytes per predicted token).
    routing_stats: optional monet_interp.stats RoutingStats of ``model`` (group scope, all heads):
        used for the rule-name methods' statistics instead of a fresh pass.
    """
    t_start = time.perf_counter()
    cpu_start = time.process_time()
    config = UnlearningConfig(
        statistic=statistic, fractions=tuple(fractions), twox_prefixes=tuple(twox_prefixes), ratio_eps=ratio_eps,
        iter_step=iter_step, iter_steps=iter_steps, iter_stat_tokens=iter_stat_tokens,
        retain_budget=retain_budget, stop_after_budget=stop_after_budget, refine_steps=refine_steps,
        seq_len=seq_len, stat_tokens=stat_tokens, eval_forget_tokens=eval_forget_tokens, eval_tokens=eval_tokens,
        curve_forget_tokens=curve_forget_tokens, curve_retain_tokens=curve_retain_tokens,
        skip_common=skip_common, batch_size=batch_size, stat_split=stat_split, select_split=select_split,
        eval_split=eval_split, seed=seed)
    if not methods:
        raise UnlearningError("no methods given")
    all_labels = resolve_labels(corpus, labels)
    forget_labels = resolve_labels(corpus, forget) if forget is not None else list(all_labels)
    missing = [lab for lab in forget_labels if lab not in all_labels]
    if missing:
        raise UnlearningError(f"forget labels {missing} are not among the measured labels")
    if len(all_labels) < 2:
        raise UnlearningError("unlearning needs at least two labels (a forget set and a retain set)")
    method_list = resolve_methods(model, methods)
    models = list({id(m.units.model): m.units.model for m in method_list}.values())
    max_ctx = min(int(getattr(m.cfg, "n_ctx", config.seq_len)) for m in models)
    if config.seq_len > max_ctx:
        raise UnlearningError(f"seq_len={config.seq_len} exceeds a model's context ({max_ctx})")
    if isinstance(byte_lengths, str):
        if byte_lengths != "auto":
            raise UnlearningError(f"byte_lengths must be 'auto', None or a tensor, got {byte_lengths!r}")
        byte_lengths = default_byte_lengths(corpus, models)
    settings = config.settings("exact token byte lengths" if byte_lengths is not None else "manifest bytes/token")
    sweep = Sweep(corpus, all_labels, config, byte_lengths, progress)
    sweep.prepare()
    label_index = {lab: k for k, lab in enumerate(all_labels)}
    if routing_stats is not None and model is not None:
        use_routing_stats(sweep, method_list, model, routing_stats, all_labels)

    curve_rows: list[dict[str, Any]] = []
    point_rows: list[dict[str, Any]] = []
    summary_rows: list[dict[str, Any]] = []
    selections: dict[tuple[str, str], torch.Tensor] = {}
    op_count: dict[tuple[str, str], int] = {}

    for fi, target in enumerate(forget_labels):
        t_label = time.perf_counter()
        f_idx = label_index[target]
        for mi, method in enumerate(method_list):
            units = method.units
            stat_name = method.statistic or config.statistic
            n = units.n_units
            curve: list[dict[str, Any]] = []

            def add_point(removed: torch.Tensor, point: int, what: str) -> dict[str, Any]:
                row = {"method": method.name, "forget": target, "point": point, "point_kind": what,
                       "n_removed": int(removed.numel()), "frac_removed": removed.numel() / max(n, 1)}
                row.update(sweep.curve_point(units, target, removed))
                row["_removed"] = removed
                curve.append(row)
                return row

            def over_budget() -> bool:
                stop = config.stop_after_budget
                return stop is not None and curve[-1]["d_retain_top1"] < -stop * config.retain_budget

            def fraction_curve(order: torch.Tensor) -> int:
                """Curve points at the fraction grid of ``order`` (stopping once far over the budget),
                refinements around the budget point; returns the operating point."""
                for k, frac in enumerate(method.fractions or config.fractions):
                    add_point(order[:max(1, round(frac * n))], k, f"fraction {frac:g}")
                    if over_budget():
                        break
                for _ in range(config.refine_steps):
                    count = refine_target(curve, config.retain_budget)
                    if count is None:
                        break
                    add_point(order[:count], len(curve), "refinement")
                return budget_point(curve, config.retain_budget)

            rng_seed = config.seed * 1_000_003 + fi * 1009 + mi
            op, chosen = None, torch.zeros(0, dtype=torch.long)
            if method.rule == "same":
                chosen = selections[(method.match, target)]
            elif method.rule == "random" and method.match is not None:
                chosen = select_random(n, op_count[(method.match, target)], seed=rng_seed)
            elif method.rule == "random":
                op = fraction_curve(select_random(n, n, seed=rng_seed))
            elif method.rule == "2x":
                chosen = select_2x(sweep.statistics(units)[stat_name], f_idx, method.factor, method.min_value)
                if config.twox_prefixes and len(chosen):
                    sizes = sorted({max(1, round(p * len(chosen))) for p in config.twox_prefixes} - {len(chosen)})
                    for k, size in enumerate(sizes):
                        add_point(chosen[:size], k, "2x prefix")
                    add_point(chosen, len(sizes), "2x rule")
                    op = len(curve) - 1
            elif method.rule == "ratio":
                i_f, i_r = forget_retain(sweep.statistics(units)[stat_name], f_idx)
                op = fraction_curve(rank_units(ratio_scores(i_f, i_r, config.ratio_eps), tiebreak=i_f))
            else:  # ratio-iter
                removed = torch.zeros(0, dtype=torch.long)
                per_step = max(1, round(config.iter_step * n))
                for step in range(config.iter_steps):
                    stats = (sweep.statistics(units)[stat_name] if step == 0
                             else sweep.iter_statistics(units, removed, stat_name))
                    i_f, i_r = forget_retain(stats, f_idx)
                    removed = torch.cat([removed, select_ratio(i_f, i_r, per_step, config.ratio_eps, exclude=removed)])
                    add_point(removed, step, f"step {step + 1}")
                    if over_budget():
                        break
                op = budget_point(curve, config.retain_budget)
            if op is not None:
                chosen = curve[op]["_removed"]
            op_count[(method.name, target)] = int(chosen.numel())
            selections[(method.name, target)] = chosen
            for k, row in enumerate(curve):
                out = {key: value for key, value in row.items() if key != "_removed"}
                out["operating_point"] = k == op
                curve_rows.append(out)

            # the operating point on the evaluation split, every label
            edited, clean = sweep.measure(units, target, chosen, "test")
            rows = []
            for k, lab in enumerate(all_labels):
                prow = {"method": method.name, "forget": target, "label": lab, "kind": sweep.data[lab].kind,
                        "is_target": lab == target, "n_removed": int(chosen.numel())}
                for c, metric in enumerate(METRICS):
                    prow[f"clean_{metric}"] = float(clean[k, c])
                    prow[metric] = float(edited[k, c])
                    prow[f"d_{metric}"] = float(edited[k, c] - clean[k, c])
                rows.append(prow)
            point_rows += rows
            summary = _summarise(method, target, sweep, rows, curve, op, n, config.retain_budget)
            cached = sweep.cached_statistics(units)
            if cached is not None:  # how much of the label's activity the removed units carry
                own = cached[stat_name][f_idx]
                total = float(own.sum())
                summary["target_share_removed"] = float(own[chosen].sum()) / total if total > 0 else float("nan")
            summary_rows.append(summary)
        sweep.log(f"forgot {target} ({fi + 1}/{len(forget_labels)}) in {time.perf_counter() - t_label:.1f} s")

    clean_frame = pd.concat(sweep.clean_rows, ignore_index=True) if sweep.clean_rows else pd.DataFrame()
    timing = dict(sweep.timing, total_s=time.perf_counter() - t_start, cpu_s=time.process_time() - cpu_start,
                  evaluated_tokens=sweep.n_evaluated_tokens)
    return UnlearningResult(
        clean=clean_frame, curves=pd.DataFrame(curve_rows), points=pd.DataFrame(point_rows),
        summary=pd.DataFrame(summary_rows), selections=selections,
        methods=[dict(name=m.name, rule=m.rule, statistic=m.statistic or config.statistic, match=m.match,
                      units=m.units.info(), model=model_name(m.units.model)) for m in method_list],
        labels=all_labels, label_kinds={lab: sweep.data[lab].kind for lab in all_labels}, settings=settings,
        timing=timing, notes=sweep.notes)


def _summarise(method: Method, target: str, sweep: Sweep, rows: list[dict[str, Any]], curve: list[dict[str, Any]],
               op: int | None, n_units: int, budget: float) -> dict[str, Any]:
    kind = sweep.data[target].kind
    tgt = next(r for r in rows if r["label"] == target)
    others = [r for r in rows if r["label"] != target]
    same = [r for r in others if r["kind"] == kind]
    out: dict[str, Any] = {"method": method.name, "rule": method.rule, "forget": target, "kind": kind,
                           "n_removed": tgt["n_removed"], "frac_removed": tgt["n_removed"] / max(n_units, 1),
                           "n_units": n_units}
    for metric in METRICS:
        d_t = tgt[f"d_{metric}"]
        d_o = float(np.mean([r[f"d_{metric}"] for r in others])) if others else float("nan")
        d_s = float(np.mean([r[f"d_{metric}"] for r in same])) if same else float("nan")
        out[f"d_target_{metric}"] = d_t
        out[f"d_others_{metric}"] = d_o
        out[f"d_others_same_kind_{metric}"] = d_s
        out[f"selectivity_{metric}"] = d_t - d_o
        out[f"clean_target_{metric}"] = tgt[f"clean_{metric}"]
    # budget checks: on the evaluation split for every method; on the selection split for curves
    out["within_budget"] = bool(out["d_others_top1"] >= -budget)
    if curve and op is not None:
        out["select_d_forget_top1"] = curve[op]["d_forget_top1"]
        out["select_d_retain_top1"] = curve[op]["d_retain_top1"]
        ok = [row["d_forget_top1"] for row in curve if row["d_retain_top1"] >= -budget]
        out["select_d_forget_top1_at_budget"] = min(ok) if ok else float("nan")
    else:
        out["select_d_forget_top1"] = out["select_d_retain_top1"] = float("nan")
        out["select_d_forget_top1_at_budget"] = float("nan")
    return out


__all__ = ["run_unlearning"]
