"""run_steering: every model x concept x method over the alpha grid, scored (see the package doc)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from monet_interp.analyses.steering.config import METHODS, SteeringConfig, config_with
from monet_interp.analyses.steering.evaluation import ConceptInputs, evaluate_concept
from monet_interp.analyses.steering.methods import choose_interventions
from monet_interp.analyses.steering.label_stats import collect_label_stats
from monet_interp.analyses.steering.metrics import characteristic_tokens
from monet_interp.analyses.steering.models import find_sae_trainer, resolve_models
from monet_interp.analyses.steering.result import SteeringResult, summarise
from monet_interp.analyses.steering.texts import labels_of, statistics_windows, text_windows, train_classifier
from monet_interp.data import open_corpus


def run_steering(models: Any, corpus: Any, concepts: Sequence[str] | None = None,
                 methods: Sequence[str] = METHODS, config: SteeringConfig | None = None,
                 saes: Mapping[str, Mapping[int, Any]] | None = None, sae_trainer: Callable | None = None,
                 verbose: bool = True, **overrides: Any) -> SteeringResult:
    """Steer every model toward every concept with every method over the alpha grid, and score it.

    models: a model, a name/path ("monet-vd-tiny", a folder), or a list / {name: model} of them
    (HookedMONET or HookedDense; a dense model gets only "sae" and "diffmean"). corpus: a Corpus or
    its folder. concepts: corpus labels (default: DEFAULT_CONCEPTS present in the corpus).
    methods: any of "monet", "top1", "sae", "diffmean", "steermoe". saes: {model name: {layer: sae}} to use
    instead of training (an SAE needs ``W_dec`` [F, d] and ``encode`` or W_enc/b_enc/b_dec);
    sae_trainer(model, corpus, layers=[...], labels=..., **cfg.sae_train_kwargs) -> {layer: sae}
    (default: ``baselines.train_saes``, TopK SAEs by SAELens, on the evaluation labels' train
    text). Other keyword arguments override SteeringConfig fields.
    """
    import pandas as pd

    cfg = config_with(config, overrides)
    methods = list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {METHODS}")
    models_by_name = resolve_models(models)
    corpus = open_corpus(corpus, verify=False)
    concepts, sources = labels_of(corpus, concepts, cfg)
    eval_labels = sorted(set(concepts) | {s for pool in sources.values() for s in pool},
                         key=list(corpus.labels).index)
    timings: dict[str, float] = {}
    notes: list[str] = []
    log = print if verbose else (lambda *a, **k: None)

    t0 = time.perf_counter()
    clf, clf_acc = train_classifier(corpus, eval_labels, cfg)
    timings["classifier"] = time.perf_counter() - t0
    log(f"[steer] classifier over {len(eval_labels)} labels: test accuracy {clf_acc:.3f} "
        f"({timings['classifier']:.1f}s)")
    texts_cache: dict[tuple[str, str], list[str]] = {}

    def texts(label: str, split: str) -> list[str]:
        key = (label, split)
        if key not in texts_cache:
            limit = None if split != "train" else 4 * cfg.stat_windows
            texts_cache[key] = corpus.texts(label, split, limit)
        return texts_cache[key]

    gen_rows: list[dict[str, Any]] = []
    selections: dict[str, Any] = {}
    for model_label, model in models_by_name.items():
        t_model = time.perf_counter()
        tok = model._require_tokenizer()
        # ---- statistics on train windows
        windows = statistics_windows(lambda label: texts(label, "train"), eval_labels, cfg, tok.encode)
        model_saes = _model_saes(model, model_label, corpus, eval_labels, methods, cfg, saes, sae_trainer, notes,
                                 timings, log)
        stats = collect_label_stats(model, windows, model_saes, cfg.batch_size)
        token_ids = {label: windows[label].flatten().tolist() for label in eval_labels}
        # ---- per concept
        for ci, concept in enumerate(concepts):
            inputs = _concept_inputs(texts, tok, concept, ci, sources[concept], eval_labels, token_ids, cfg)
            if len(inputs.prompts) < 2:
                notes.append(f"{model_label}/{concept}: fewer than 2 prompts; skipped")
                continue
            if not inputs.token_set:
                notes.append(f"{model_label}/{concept}: no characteristic tokens; dlogp is nan")
            others = [l for l in eval_labels if l != concept]
            interventions = choose_interventions(model, stats, windows, concept, others, methods, cfg, model_saes)
            sel: dict[str, Any] = {"characteristic_tokens": [tok.id_to_token(t) for t in inputs.token_set],
                                   "prompt_sources": inputs.sources}
            for method, iv in interventions.items():
                sel[method] = iv.describe()
            selections.setdefault(model_label, {})[concept] = sel
            gen_rows += evaluate_concept(model, model_label, concept, interventions, inputs, clf, cfg, timings)
        timings[model_label] = time.perf_counter() - t_model
        log(f"[steer] {model_label}: {len(concepts)} concepts in {timings[model_label]:.1f}s")
    gens_df = pd.DataFrame(gen_rows)
    if gens_df.empty:
        raise ValueError("nothing was evaluated (no applicable method / prompts); see the notes: " + "; ".join(notes))
    curves_df, summary_df = summarise(gens_df, cfg.alphas)
    return SteeringResult(gens_df, curves_df, summary_df, selections, clf_acc, cfg.to_dict(), notes, timings)


def _model_saes(model: Any, model_label: str, corpus: Any, eval_labels: list[str], methods: list[str],
                cfg: SteeringConfig, saes: Mapping[str, Mapping[int, Any]] | None, sae_trainer: Callable | None,
                notes: list[str], timings: dict[str, float], log: Callable) -> dict[int, Any]:
    """{layer: sae} of ``model`` for the "sae" method: given ones, or trained (cfg.train_saes)."""
    if "sae" not in methods:
        return {}
    layers = list(cfg.sae_layers) if cfg.sae_layers is not None else [model.cfg.num_hidden_layers // 2]
    given = (saes or {}).get(model_label)
    if given is not None:
        return {int(l): s for l, s in given.items() if int(l) in layers} or dict(given)
    trainer = (sae_trainer or find_sae_trainer()) if cfg.train_saes else None
    if trainer is None:
        notes.append(f"{model_label}: no SAE given and none trained (train_saes={cfg.train_saes}); "
                     "method 'sae' skipped")
        return {}
    t_sae = time.perf_counter()
    kwargs = {"labels": eval_labels, **cfg.sae_train_kwargs}
    model_saes = {int(l): s for l, s in trainer(model, corpus, layers=layers, **kwargs).items()}
    timings[f"{model_label}/sae_training"] = time.perf_counter() - t_sae
    log(f"[steer] {model_label}: trained SAEs at layers {layers} "
        f"({timings[f'{model_label}/sae_training']:.1f}s)")
    return model_saes


def _concept_inputs(texts: Callable[[str, str], list[str]], tok: Any, concept: str, ci: int, pool: list[str],
                    eval_labels: list[str], token_ids: dict[str, list[int]], cfg: SteeringConfig) -> ConceptInputs:
    """Prompts drawn in turn from the test windows of the labels in ``pool``, KL windows of the
    other labels, and the concept's characteristic tokens (train windows)."""
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    per_source = {s: text_windows(texts(s, "test"), cfg.n_prompts, cfg.prompt_tokens, tok.encode,
                                  cfg.seed + 101 * (eval_labels.index(s) + 1)) for s in pool}
    prompts, prompt_src = [], []
    cursor = {s: 0 for s in pool}
    k = 0
    while len(prompts) < cfg.n_prompts and any(cursor[s] < len(per_source[s]) for s in pool):
        s = pool[k % len(pool)]
        k += 1
        if cursor[s] < len(per_source[s]):
            prompts.append(bos + per_source[s][cursor[s]])
            prompt_src.append(s)
            cursor[s] += 1
    if len(prompts) < 2:
        return ConceptInputs(prompts, prompt_src, torch.zeros(0, 0, dtype=torch.long), [])
    kl_w: list[list[int]] = []
    for j, l in enumerate([l for l in eval_labels if l != concept]):
        kl_w += text_windows(texts(l, "test"), 1, cfg.kl_tokens, tok.encode, cfg.seed + 7919 + 31 * j + ci)
        if len(kl_w) >= cfg.kl_windows:
            break
    specials = [t for t in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) if t is not None]
    token_set = (characteristic_tokens(token_ids, concept, k=cfg.char_tokens, exclude=specials)
                 or characteristic_tokens(token_ids, concept, k=cfg.char_tokens, min_count=1, exclude=specials))
    return ConceptInputs(prompts, prompt_src, torch.tensor(kl_w, dtype=torch.long), token_set)


__all__ = ["run_steering"]
