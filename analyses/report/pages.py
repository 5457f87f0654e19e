"""One expert's page data: reruns of the windows it shows (token colours, per-head split), logit
effects of its output direction, the ablation effect of pruning it, and its neighbours."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from monet_interp.analyses.report.expert_stats import ExpertStats, histogram, label_summary
from monet_interp.analyses.report.experts import (
    DEFAULT_CONTEXT_LEFT,
    DEFAULT_CONTEXT_RIGHT,
    DEFAULT_FALLBACK_WINDOWS,
    DEFAULT_INTERVALS,
    DEFAULT_N_LOGITS,
    DEFAULT_N_NEIGHBOURS,
    DEFAULT_PER_INTERVAL,
    ExpertRef,
)
from monet_interp.analyses.report.windows import Document, Window, g_names, window_batches


def _prune_context(model: Any, ref: ExpertRef) -> Any:
    """Exact pruning of expert (i, j) in every layer of its routing group, all heads."""
    from monet_interp.editing import ExpertEdit

    edits = [ExpertEdit(ref.i, ref.j, "prune", group=ref.group)]
    if hasattr(model, "edit_experts"):
        return model.edit_experts(edits)
    from monet_interp.editing import edit_experts

    return edit_experts(model, edits)


def _act_names(cfg: Any, group: int) -> dict[int, tuple[str, ...]]:
    out = {}
    for layer in cfg.layers_of_group(group):
        base = f"blocks.{layer}.moe."
        out[layer] = (base + "hook_expert_acts",) if not cfg.is_vertical else (
            base + "hook_expert_acts_row", base + "hook_expert_acts_col")
    return out


@dataclass
class _Rerun:
    """What a rerun of one window gives: scores [p], per-head scores [p, H], clean nll [p-1]."""

    scores: np.ndarray
    head_scores: np.ndarray
    nll: np.ndarray
    acts: dict[tuple[int, int], list[np.ndarray]]  # (layer, pos) -> [acts of i] or [a_i, a'_j]


def rerun_windows(model: Any, windows: Sequence[Window], ref: ExpertRef, positions: Mapping[int, Sequence[int]] | None = None,
                  batch_size: int = 8) -> dict[int, _Rerun]:
    """Rerun ``windows``; per window: s(t) and per-head split of expert ``ref`` (from the group's
    first-layer hook_g_row / hook_g_col), the clean next-token nll, and at ``positions[w]`` the
    expert's activations in every layer of the group (HD: relu2(U_i x + c_i); VD: a_i and a'_j)."""
    cfg = model.cfg
    rname, cname = g_names(cfg, ref.group)
    acts = _act_names(cfg, ref.group) if positions else {}
    wanted = {rname, cname} | {n for names in acts.values() for n in names}
    out: dict[int, _Rerun] = {}
    with torch.no_grad():
        for batch in window_batches(model, windows, batch_size):
            nll, cache = model.run_with_cache(batch.tokens, attention_mask=batch.mask, return_type="loss",
                                              loss_per_token=True, names_filter=lambda n: n in wanted,
                                              return_cache_object=False)
            head = (cache[rname][..., ref.i].double() * cache[cname][..., ref.j].double()).cpu()  # [b, p, H]
            for row, w in enumerate(batch.windows):
                n = len(w.tokens)
                got: dict[tuple[int, int], list[np.ndarray]] = {}
                for layer, names in acts.items():
                    for pos in (positions or {}).get(w.index, ()):
                        if cfg.is_vertical:
                            got[(layer, pos)] = [cache[names[0]][row, pos, ref.i].double().cpu().numpy(),
                                                 cache[names[1]][row, pos, ref.j].double().cpu().numpy()]
                        else:
                            got[(layer, pos)] = [cache[names[0]][row, pos, ref.i].double().cpu().numpy()]
                out[w.index] = _Rerun(head[row, :n].sum(-1).numpy(), head[row, :n].numpy(),
                                      nll[row, :n - 1].double().cpu().numpy(), got)
    return out


def pruned_nll(model: Any, windows: Sequence[Window], ref: ExpertRef, batch_size: int = 8) -> dict[int, np.ndarray]:
    """Next-token nll [len - 1] of each window with expert ``ref`` pruned (group scope)."""
    out: dict[int, np.ndarray] = {}
    with torch.no_grad(), _prune_context(model, ref):
        for batch in window_batches(model, windows, batch_size):
            nll = model(batch.tokens, attention_mask=batch.mask, return_type="loss", loss_per_token=True)
            for row, w in enumerate(batch.windows):
                out[w.index] = nll[row, :len(w.tokens) - 1].double().cpu().numpy()
    return out


def expert_direction(model: Any, ref: ExpertRef, layer: int, acts: Sequence[np.ndarray]) -> np.ndarray:
    """E_ij at layer ``layer`` for given (mean) activations: HD acts = [relu2(U_i x + c_i)];
    VD acts = [a_i, a'_j]. Returns a [d_model] float64 vector."""
    moe = model.blocks[layer].moe
    m = moe.moe_dim
    with torch.no_grad():
        if not model.cfg.is_vertical:
            V = moe.v.weight[:, ref.j * m:(ref.j + 1) * m].double().cpu().numpy()
            return V @ acts[0] + moe.b[ref.j].double().cpu().numpy()
        h = m // 2
        a_i, a_j = acts
        sl_i, sl_j = slice(ref.i * h, (ref.i + 1) * h), slice(ref.j * h, (ref.j + 1) * h)
        w = {n: getattr(moe, n).weight.double().cpu().numpy() for n in ("v11", "v12", "v21", "v22")}
        top = w["v11"][:, sl_i] @ a_i + w["v12"][:, sl_i] @ a_j + moe.b1[ref.i].double().cpu().numpy()
        bottom = w["v21"][:, sl_j] @ a_i + w["v22"][:, sl_j] @ a_j + moe.b2[ref.j].double().cpu().numpy()
        return np.concatenate([top, bottom])


def _token_table(model: Any, values: np.ndarray, n: int) -> dict[str, list[dict[str, Any]]]:
    order = np.argsort(-values, kind="stable")
    strs = _token_strings(model, [int(t) for t in order[:n]] + [int(t) for t in order[::-1][:n]])

    def rows(ids: Sequence[int], names: Sequence[str]) -> list[dict[str, Any]]:
        return [{"id": int(t), "token": s, "value": float(values[t])} for t, s in zip(ids, names)]

    return {"positive": rows(order[:n].tolist(), strs[:n]), "negative": rows(order[::-1][:n].tolist(), strs[n:])}


def _token_strings(model: Any, ids: Sequence[int]) -> list[str]:
    if getattr(model, "tokenizer", None) is None:
        return [f"<{t}>" for t in ids]
    return list(model.to_str_tokens([int(t) for t in ids]))


def logit_effects(model: Any, ref: ExpertRef, mean_acts: Mapping[int, Sequence[np.ndarray]],
                  n: int = DEFAULT_N_LOGITS) -> dict[str, Any]:
    """Top/bottom ``n`` tokens of W_U^T d, with d = sum over the group's layers of E_ij(mean acts)
    (plus the same per layer). ``mean_acts[layer]`` as for :func:`expert_direction`."""
    W_U = model.W_U.detach().double().cpu().numpy()  # [d_model, d_vocab]
    per_layer, total = {}, None
    for layer in sorted(mean_acts):
        d = expert_direction(model, ref, layer, mean_acts[layer])
        total = d if total is None else total + d
        per_layer[str(layer)] = _token_table(model, d @ W_U, n)
    table = _token_table(model, total @ W_U, n)
    return {**table, "per_layer": per_layer, "direction_norm": float(np.linalg.norm(total)),
            "layers": sorted(mean_acts)}


def _example(model: Any, windows: Sequence[Window], documents: Sequence[Document] | None, rerun: Mapping[int, _Rerun],
             window: int, pos: int, left: int, right: int) -> dict[str, Any]:
    w = windows[window]
    r = rerun[window]
    lo, hi = max(0, pos - left), min(len(w.tokens), pos + right + 1)
    ids = w.tokens[lo:hi]
    doc = documents[w.doc] if documents is not None else None
    return {
        "window": w.index, "label": w.label, "doc": w.doc, "doc_index": doc.index if doc else None,
        "doc_key": doc.key if doc else None, "pos": int(pos), "doc_pos": int(w.doc_position(pos)),
        "score": float(r.scores[pos]), "focus": int(pos - lo), "start": int(lo),
        "token_ids": [int(t) for t in ids], "tokens": _token_strings(model, ids),
        "scores": [float(s) for s in r.scores[lo:hi]],
        "head_scores": [[float(v) for v in row] for row in r.head_scores[lo:hi]],
    }


def _interval_picks(stats: ExpertStats, n_intervals: int, per_interval: int, seed: int) -> list[dict[str, Any]]:
    if stats.n_fires == 0 or n_intervals < 1:
        return []
    width = stats.max_score / n_intervals
    rng = np.random.default_rng(seed + 7919 * stats.ref.flat(1 << 20) + stats.ref.group)
    out = []
    sample = stats.sample
    for k in range(n_intervals):
        lo, hi = k * width, (k + 1) * width
        inside = (sample[:, 0] > lo) & (sample[:, 0] <= hi) if k else (sample[:, 0] > 0) & (sample[:, 0] <= hi)
        idx = np.nonzero(inside)[0]
        pick = np.sort(rng.choice(idx, size=min(per_interval, len(idx)), replace=False)) if len(idx) else idx
        out.append({"lo": float(lo), "hi": float(hi), "n_in_sample": int(len(idx)),
                    "picks": [(int(sample[p, 1]), int(sample[p, 2])) for p in pick]})
    return out[::-1]  # highest interval first


def _neighbours(stats: ExpertStats, n_experts: int, n: int, built: set[ExpertRef]) -> dict[str, list[dict[str, Any]]]:
    out = {}
    ref = stats.ref
    for axis, fires, cofires, lab in (("row", stats.row_fires, stats.row_cofires, stats.row_label_sum),
                                      ("col", stats.col_fires, stats.col_cofires, stats.col_label_sum)):
        rows = []
        for other in range(n_experts):
            nb = ExpertRef(ref.group, ref.i, other) if axis == "row" else ExpertRef(ref.group, other, ref.j)
            if nb == ref:
                continue
            union = stats.n_fires + int(fires[other]) - int(cofires[other])
            summary = label_summary(lab[:, other], stats.label_tokens, stats.labels)
            rows.append({
                "group": nb.group, "i": nb.i, "j": nb.j, "flat": nb.flat(n_experts), "slug": nb.slug,
                "built": nb in built, "fires": int(fires[other]),
                "density": float(fires[other] / stats.n_tokens) if stats.n_tokens else 0.0,
                "coactivation": float(cofires[other] / stats.n_fires) if stats.n_fires else 0.0,
                "jaccard": float(cofires[other] / union) if union else 0.0,
                "label": summary["label"], "top_label": summary["top_label"],
            })
        rows.sort(key=lambda r: (-r["coactivation"], -r["density"], r["flat"]))
        out[axis] = rows[:n]
    return out


def build_expert_page(
    model: Any,
    windows: Sequence[Window],
    stats: ExpertStats,
    *,
    documents: Sequence[Document] | None = None,
    built: Iterable[ExpertRef] = (),
    n_intervals: int = DEFAULT_INTERVALS,
    per_interval: int = DEFAULT_PER_INTERVAL,
    context_left: int = DEFAULT_CONTEXT_LEFT,
    context_right: int = DEFAULT_CONTEXT_RIGHT,
    n_logits: int = DEFAULT_N_LOGITS,
    n_neighbours: int = DEFAULT_N_NEIGHBOURS,
    fallback_windows: int = DEFAULT_FALLBACK_WINDOWS,
    batch_size: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """Everything one expert page shows, as a JSON-ready dict (see the module docstring)."""
    cfg = model.cfg
    ref = stats.ref
    E, H = cfg.moe_experts, cfg.moe_heads
    built_set = set(built) | {ref}
    intervals = _interval_picks(stats, n_intervals, per_interval, seed)
    top_positions: dict[int, list[int]] = {}
    for _, w, p in stats.top:
        top_positions.setdefault(w, []).append(p)
    shown = sorted({w for _, w, _ in stats.top} | {w for iv in intervals for w, _ in iv["picks"]})
    if stats.top:
        ablate_windows = sorted(top_positions)
    else:
        ablate_windows = [w.index for w in windows[:fallback_windows]]
    needed = sorted(set(shown) | set(ablate_windows))
    rerun = rerun_windows(model, [windows[w] for w in needed], ref, top_positions, batch_size)

    # ---- top contexts and interval groups (token colouring from the rerun)
    top_contexts = [_example(model, windows, documents, rerun, w, p, context_left, context_right) for _, w, p in stats.top]
    interval_groups = [{"lo": iv["lo"], "hi": iv["hi"], "n_in_sample": iv["n_in_sample"],
                        "examples": [_example(model, windows, documents, rerun, w, p, context_left, context_right)
                                     for w, p in iv["picks"]]} for iv in intervals]

    # ---- logit effects
    logits = None
    if stats.top:
        mean_acts: dict[int, list[np.ndarray]] = {}
        for layer in cfg.layers_of_group(ref.group):
            collected = [rerun[w].acts[(layer, p)] for _, w, p in stats.top]
            mean_acts[layer] = [np.mean([c[k] for c in collected], axis=0) for k in range(len(collected[0]))]
        logits = logit_effects(model, ref, mean_acts, n_logits)
        logits["n_contexts"] = len(stats.top)

    # ---- ablation
    pruned = pruned_nll(model, [windows[w] for w in ablate_windows], ref, batch_size)
    deltas = [pruned[w] - rerun[w].nll for w in ablate_windows]
    all_delta = np.concatenate(deltas) if deltas else np.zeros(0)
    clean_all = np.concatenate([rerun[w].nll for w in ablate_windows]) if ablate_windows else np.zeros(0)
    at_top = [float(pruned[w][p] - rerun[w].nll[p]) for _, w, p in stats.top if p < len(windows[w].tokens) - 1]
    ablation = {
        "edit": {"i": ref.i, "j": ref.j, "op": "prune", "group": ref.group},
        "windows": "top contexts" if stats.top else "fallback",
        "n_windows": len(ablate_windows), "n_positions": int(all_delta.size),
        "mean_delta_loss": float(all_delta.mean()) if all_delta.size else 0.0,
        "max_abs_delta_loss": float(np.abs(all_delta).max()) if all_delta.size else 0.0,
        "clean_loss": float(clean_all.mean()) if clean_all.size else None,
        "n_top_positions": len(at_top),
        "mean_delta_loss_at_top": float(np.mean(at_top)) if at_top else None,
    }

    # ---- header, histogram, labels
    label = label_summary(stats.label_sum, stats.label_tokens, stats.labels)
    per_label = [{"label": lab, "n_tokens": int(stats.label_tokens[k]),
                  "mean_score": label["means"][k], "share": label["shares"][k],
                  "fire_rate": float(stats.label_fires[k] / stats.label_tokens[k]) if stats.label_tokens[k] else 0.0}
                 for k, lab in enumerate(stats.labels)]
    head_total = float(stats.head_sum.sum())
    return {
        "ref": {"group": ref.group, "i": ref.i, "j": ref.j, "flat": ref.flat(E), "slug": ref.slug,
                "layers": cfg.layers_of_group(ref.group), "n_experts": E, "n_heads": H,
                "decompose": cfg.moe_decompose},
        "summary": {
            "n_tokens": stats.n_tokens, "n_fires": stats.n_fires, "density": stats.density,
            "fire_threshold": stats.fire_threshold,
            "max_score": stats.max_score, "mean_score": stats.score_sum / stats.n_tokens if stats.n_tokens else 0.0,
            "mean_score_when_firing": stats.score_sum / stats.n_fires if stats.n_fires else 0.0,
            "head_mass": [float(x) for x in stats.head_sum],
            "head_share": [float(x / head_total) if head_total > 0 else 0.0 for x in stats.head_sum],
        },
        "label": {"label": label["label"], "top_label": label["top_label"], "entropy": label["entropy"],
                  "specialisation": label["specialisation"], "per_label": per_label},
        "histogram": histogram(stats),
        "top_contexts": top_contexts,
        "intervals": interval_groups,
        "sample": {"size": int(len(stats.sample)), "seen": stats.sample_seen},
        "logit_effects": logits,
        "ablation": ablation,
        "neighbours": _neighbours(stats, E, n_neighbours, built_set),
    }


__all__ = ["build_expert_page", "expert_direction", "logit_effects", "pruned_nll", "rerun_windows"]
