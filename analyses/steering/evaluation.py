"""Evaluating one concept: generate under each intervention over the alpha grid and score every
generation (concept classifier, fluency, distinct-2, concept-token log-prob, side-effect KL)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from monet_interp.analyses.steering.config import SteeringConfig
from monet_interp.analyses.steering.metrics import (
    NgramNaiveBayes,
    distinct_n,
    fluency_score,
    mean_token_kl,
    set_logprob,
)
from monet_interp.analyses.steering.texts import classify
from monet_interp.editing.interventions import Intervention
from monet_interp.hooked_lm import HookedCausalLM


class ConceptInputs(NamedTuple):
    """What one concept is evaluated on: prompts from other labels, KL text, characteristic tokens."""

    prompts: list[list[int]]  # with BOS
    sources: list[str]  # the label each prompt comes from
    kl_tokens: Tensor  # [k, T] unrelated held-out text
    token_set: list[int]


def _strip_after_eos(row: list[int], eos: int | None) -> list[int]:
    if eos is not None and eos in row:
        return row[: row.index(eos)]
    return row


@torch.no_grad()
def _generate(model: Any, prompts: Tensor, cfg: SteeringConfig, intervention: Intervention | None,
              alpha: float) -> list[list[int]]:
    ctx = intervention.context(model, alpha) if intervention is not None else contextlib.nullcontext()
    with ctx:
        out = model.generate(prompts.to(model.device), max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample,
                             temperature=cfg.temperature, top_k=cfg.top_k, seed=cfg.seed, stop_at_eos=True,
                             return_type="tokens")
    eos = model.cfg.eos_token_id
    return [_strip_after_eos(row, eos) for row in out[:, prompts.shape[1]:].tolist()]


def _pad(prompts: Tensor, gens: list[list[int]], pad: int) -> tuple[Tensor, Tensor]:
    """[prompt + generation] rows right-padded to one width, and the mask of generated tokens."""
    p = prompts.shape[1]
    width = p + max(1, max(len(g) for g in gens))
    full = torch.full((len(gens), width), pad, dtype=torch.long)
    mask = torch.zeros(len(gens), width, dtype=torch.bool)
    full[:, :p] = prompts
    for r, g in enumerate(gens):
        full[r, p:p + len(g)] = torch.tensor(g, dtype=torch.long)
        mask[r, p:p + len(g)] = True
    return full, mask


@torch.no_grad()
def _logits(model: Any, full: Tensor) -> Tensor:
    """Logits [n, T, vocab] (float32, on the CPU) of ``full`` under the model as it is now."""
    return model(full.to(model.device)).float().cpu()


def _mean_over_generated(values: Tensor, mask: Tensor) -> np.ndarray:
    """Mean of ``values`` [n, T-1] (predicting position k+1 from k) over the generated positions
    (nan for an empty generation)."""
    m = mask[:, 1:]
    count = m.sum(1)
    return torch.where(count > 0, (values * m).sum(1) / count.clamp_min(1),
                       torch.full((values.shape[0],), float("nan"))).double().numpy()


def _generation_nll(logits: Tensor, full: Tensor, mask: Tensor) -> np.ndarray:
    """Mean NLL per generated token [n] under the model that gave ``logits`` of ``full``."""
    return _mean_over_generated(HookedCausalLM.loss_fn(logits, full, per_token=True), mask)


def _set_logprob(logits: Tensor, mask: Tensor, token_set: Sequence[int]) -> np.ndarray:
    """Mean over generated positions of log P(next token in the set) [n]."""
    if not token_set:
        return np.full(logits.shape[0], np.nan)
    return _mean_over_generated(set_logprob(logits[:, :-1], token_set), mask)


def evaluate_concept(model: Any, model_label: str, concept: str, interventions: Mapping[str, Intervention],
                     inputs: ConceptInputs, clf: NgramNaiveBayes, cfg: SteeringConfig,
                     timings: dict[str, float]) -> list[dict[str, Any]]:
    """One row per (method, alpha, prompt): the unsteered reference once, then every intervention
    at every alpha of the grid (alpha 0 reuses the reference). Times each method in ``timings``."""
    tok = model._require_tokenizer()
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    prompts, prompt_src, kl_t, token_set = inputs
    prompt_t = torch.tensor(prompts, dtype=torch.long)
    # ---- unsteered reference
    base_gens = _generate(model, prompt_t, cfg, None, 0.0)
    base_full, base_mask = _pad(prompt_t, base_gens, pad)
    base_logits = _logits(model, base_full)
    base_nll = _generation_nll(base_logits, base_full, base_mask)
    base_setlp = _set_logprob(base_logits, base_mask, token_set)
    base_kl_logits = _logits(model, kl_t) if len(kl_t) else None
    base_texts = [tok.decode(g) for g in base_gens]
    base_pred = classify(clf, base_texts, cfg.min_alnum_chars)
    n_prompts = len(prompts)
    halves = ["select" if p % 2 == 0 else "report" for p in range(n_prompts)]
    prompt_texts = [tok.decode(p[len(bos):]) for p in prompts]
    rows: list[dict[str, Any]] = []
    for method, iv in interventions.items():
        t_method = time.perf_counter()
        for alpha in cfg.alphas:
            if alpha == 0:
                gens, nll, setlp, texts_a, pred = base_gens, base_nll, base_setlp, base_texts, base_pred
                kl = 0.0
            else:
                gens = _generate(model, prompt_t, cfg, iv, alpha)
                full, mask = _pad(prompt_t, gens, pad)
                nll = _generation_nll(_logits(model, full), full, mask)  # unsteered model scores it
                with iv.context(model, alpha):
                    setlp = _set_logprob(_logits(model, base_full), base_mask, token_set)
                    kl_logits = _logits(model, kl_t) if len(kl_t) else None
                kl = mean_token_kl(base_kl_logits, kl_logits) if kl_logits is not None else float("nan")
                texts_a = [tok.decode(g) for g in gens]
                pred = classify(clf, texts_a, cfg.min_alnum_chars)
            proba = clf.predict_proba(texts_a, per_gram_temperature=1.0)
            p_target = proba[:, clf.classes_.index(concept)]
            flu = fluency_score(nll, base_nll)
            for p in range(n_prompts):
                rows.append({
                    "model": model_label, "method": method, "concept": concept, "alpha": float(alpha),
                    "prompt_idx": p, "half": halves[p], "source": prompt_src[p], "prompt": prompt_texts[p],
                    "generation": texts_a[p], "n_generated": len(gens[p]), "predicted": pred[p],
                    "hit": float(pred[p] == concept), "base_hit": float(base_pred[p] == concept),
                    "p_target": float(p_target[p]), "nll0": float(nll[p]), "fluency": float(flu[p]),
                    "distinct2": distinct_n(gens[p], 2), "dlogp": float(setlp[p] - base_setlp[p]),
                    "kl": kl})
        timings[f"{model_label}/{concept}/{method}"] = time.perf_counter() - t_method
    return rows


__all__ = ["ConceptInputs", "evaluate_concept"]
