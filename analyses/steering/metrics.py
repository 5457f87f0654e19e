"""Offline, judge-free metrics for steering (see shared reference evals.md, "Steering").

Everything here is independent of the model being steered except where a function takes logits:

- :class:`NgramNaiveBayes`: a multinomial naive Bayes classifier on character n-grams (numpy only),
  trained on held-out corpus text; the concept score C(a) is the share of steered generations it
  assigns to the target label (:func:`concept_score`).
- :func:`characteristic_tokens` / :func:`set_logprob`: a concept's most over-represented tokens and
  log P(next token in that set); their mean change under steering is a continuous propensity.
- :func:`fluency_score`: exp(-max(0, logPPL_0(gen_a) - logPPL_0(gen_0))) from per-generation mean
  NLLs under the *unsteered* model; :func:`distinct_n` against repetition.
- :func:`mean_token_kl`: side effects, mean over tokens of KL(p_0 || p_a) on unrelated text.
- :func:`steerability`: per-prompt least-squares slope of a propensity against the factor alpha
  (Tan et al. 2024) and the share of prompts whose slope is negative ("moved the wrong way").
- :func:`normalise_concept` and :func:`harmonic_mean`: AxBench-style aggregate, the strict
  harmonic mean (0 if any part is 0) of the normalised concept score and the fluency.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor


# ---------------------------------------------------------------------------- classifier
def char_ngrams(text: str, ngram_range: tuple[int, int] = (1, 4), lowercase: bool = False) -> Counter[str]:
    """Counts of every character n-gram of ``text`` with n in [lo, hi] (inclusive)."""
    if lowercase:
        text = text.lower()
    lo, hi = ngram_range
    counts: Counter[str] = Counter()
    for n in range(lo, hi + 1):
        counts.update(text[k:k + n] for k in range(len(text) - n + 1))
    return counts


class NgramNaiveBayes:
    """Multinomial naive Bayes on character n-grams, written with numpy.

    ``fit(texts, labels)`` keeps the ``max_features`` most frequent n-grams of the training text
    (ties broken by the n-gram string, so the result is deterministic), estimates
    log P(ngram | class) with additive smoothing ``alpha`` and a uniform class prior (the
    evaluation asks "which label does this look like", not "which label is common").
    ``log_likelihoods`` gives per-class sums [n, C]; ``predict_proba`` the posterior, optionally
    tempered by dividing the log-likelihood by the number of n-grams times ``per_gram_temperature``
    (long texts otherwise give posteriors of exactly 0 or 1).
    """

    def __init__(self, ngram_range: tuple[int, int] = (1, 4), max_features: int = 50_000, alpha: float = 0.1,
                 lowercase: bool = False) -> None:
        if ngram_range[0] < 1 or ngram_range[1] < ngram_range[0]:
            raise ValueError(f"ngram_range must be (lo, hi) with 1 <= lo <= hi, got {ngram_range}")
        if alpha <= 0:
            raise ValueError(f"alpha (smoothing) must be positive, got {alpha}")
        self.ngram_range = tuple(ngram_range)
        self.max_features = int(max_features)
        self.alpha = float(alpha)
        self.lowercase = lowercase
        self.classes_: list[str] = []
        self.vocabulary_: dict[str, int] = {}
        self.log_prob_: np.ndarray | None = None  # [C, V]

    def _counts(self, text: str) -> Counter[str]:
        return char_ngrams(text, self.ngram_range, self.lowercase)

    def fit(self, texts: Sequence[str], labels: Sequence[str]) -> NgramNaiveBayes:
        if len(texts) != len(labels):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        if not texts:
            raise ValueError("no training text")
        self.classes_ = sorted(set(labels))
        per_class: dict[str, Counter[str]] = {c: Counter() for c in self.classes_}
        total: Counter[str] = Counter()
        for text, label in zip(texts, labels):
            counts = self._counts(text)
            per_class[label].update(counts)
            total.update(counts)
        kept = sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))[: self.max_features]
        self.vocabulary_ = {gram: k for k, (gram, _) in enumerate(kept)}
        matrix = np.zeros((len(self.classes_), len(self.vocabulary_)), dtype=np.float64)
        for c, label in enumerate(self.classes_):
            for gram, n in per_class[label].items():
                k = self.vocabulary_.get(gram)
                if k is not None:
                    matrix[c, k] += n
        smoothed = matrix + self.alpha
        self.log_prob_ = np.log(smoothed) - np.log(smoothed.sum(1, keepdims=True))
        return self

    def _check_fitted(self) -> np.ndarray:
        if self.log_prob_ is None:
            raise RuntimeError("the classifier is not fitted; call fit(texts, labels) first")
        return self.log_prob_

    def log_likelihoods(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(sum of log P(ngram | class) [n, C], number of known n-grams [n])."""
        log_prob = self._check_fitted()
        out = np.zeros((len(texts), log_prob.shape[0]), dtype=np.float64)
        seen = np.zeros(len(texts), dtype=np.float64)
        for row, text in enumerate(texts):
            counts = self._counts(text)
            idx = [self.vocabulary_[g] for g in counts if g in self.vocabulary_]
            if not idx:
                continue
            weights = np.array([counts[g] for g in counts if g in self.vocabulary_], dtype=np.float64)
            out[row] = log_prob[:, idx] @ weights
            seen[row] = weights.sum()
        return out, seen

    def predict_proba(self, texts: Sequence[str], per_gram_temperature: float | None = None) -> np.ndarray:
        """Posterior P(class | text) [n, C] (uniform prior); uniform for a text with no known n-gram."""
        ll, seen = self.log_likelihoods(texts)
        if per_gram_temperature is not None:
            ll = ll / (np.maximum(seen, 1.0)[:, None] * per_gram_temperature)
        ll = ll - ll.max(1, keepdims=True)
        p = np.exp(ll)
        return p / p.sum(1, keepdims=True)

    def predict(self, texts: Sequence[str]) -> list[str]:
        """The most likely class of each text (the first class in sorted order on exact ties)."""
        ll, _ = self.log_likelihoods(texts)
        return [self.classes_[k] for k in ll.argmax(1)]

    def accuracy(self, texts: Sequence[str], labels: Sequence[str]) -> float:
        if not texts:
            return float("nan")
        return float(np.mean([p == y for p, y in zip(self.predict(texts), labels)]))

    def confusion(self, texts: Sequence[str], labels: Sequence[str]) -> Any:
        """A pandas confusion table (rows: true label, columns: predicted)."""
        import pandas as pd

        return pd.crosstab(pd.Series(list(labels), name="true"), pd.Series(self.predict(texts), name="predicted"))


def concept_score(predictions: Sequence[str], target: str) -> float:
    """Share of generations the classifier assigns to ``target`` (nan when there are none)."""
    if len(predictions) == 0:
        return float("nan")
    return float(np.mean([p == target for p in predictions]))


# ---------------------------------------------------------------------------- characteristic tokens
def characteristic_tokens(token_ids_by_label: dict[str, Iterable[int]], target: str, k: int = 20,
                          min_count: int = 5, smoothing: float = 1.0, exclude: Iterable[int] = ()) -> list[int]:
    """The ``k`` tokens most over-represented in ``target`` against the pooled other labels.

    Score: log((n_t + s) / (N_t + s V)) - log((n_o + s) / (N_o + s V)) with n the token's count,
    N the label's total, V the number of distinct tokens seen, s = ``smoothing``; only tokens seen
    at least ``min_count`` times in the target qualify; ties break toward the smaller id.
    """
    if target not in token_ids_by_label:
        raise KeyError(f"no tokens for target label {target!r}")
    if len(token_ids_by_label) < 2:
        raise ValueError("characteristic tokens need at least one other label to compare against")
    skip = set(int(t) for t in exclude)
    target_counts: Counter[int] = Counter(int(t) for t in token_ids_by_label[target])
    other_counts: Counter[int] = Counter()
    for label, ids in token_ids_by_label.items():
        if label != target:
            other_counts.update(int(t) for t in ids)
    vocab = len(set(target_counts) | set(other_counts))
    n_t, n_o = sum(target_counts.values()), sum(other_counts.values())
    scored = []
    for tok, count in target_counts.items():
        if count < min_count or tok in skip:
            continue
        score = (math.log((count + smoothing) / (n_t + smoothing * vocab))
                 - math.log((other_counts.get(tok, 0) + smoothing) / (n_o + smoothing * vocab)))
        scored.append((-score, tok))
    scored.sort()
    return [tok for _, tok in scored[:k]]


def set_logprob(logits: Float[Tensor, "*batch vocab"], token_ids: Sequence[int] | Tensor) -> Float[Tensor, "*batch"]:
    """log sum_{v in set} softmax(logits)[v]: the log-probability that the next token is in the set."""
    ids = torch.as_tensor(token_ids, dtype=torch.long, device=logits.device)
    if ids.numel() == 0:
        raise ValueError("the token set is empty")
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return torch.logsumexp(log_probs[..., ids], dim=-1)


# ---------------------------------------------------------------------------- fluency, diversity, KL
def fluency_score(logppl_steered: Any, logppl_base: Any) -> Any:
    """exp(-max(0, logPPL_0(gen_a) - logPPL_0(gen_0))), elementwise; 1 when the steered text is no
    less likely under the unsteered model than the unsteered generation. nan propagates.
    A float for scalar inputs, an array otherwise."""
    a = np.asarray(logppl_steered, dtype=np.float64)
    b = np.asarray(logppl_base, dtype=np.float64)
    out = np.exp(-np.maximum(0.0, a - b))
    return float(out) if out.ndim == 0 else out


def distinct_n(tokens: Sequence[Any], n: int = 2) -> float:
    """Distinct-n of one sequence: #unique n-grams / #n-grams (nan when it has fewer than n tokens)."""
    seq = list(tokens)
    grams = [tuple(seq[k:k + n]) for k in range(len(seq) - n + 1)]
    if not grams:
        return float("nan")
    return len(set(grams)) / len(grams)


def mean_token_kl(logits_p: Float[Tensor, "*batch pos vocab"], logits_q: Float[Tensor, "*batch pos vocab"],
                  mask: Tensor | None = None) -> float:
    """Mean over (unmasked) positions of KL(p || q), p = softmax(logits_p) (the unsteered model)."""
    if logits_p.shape != logits_q.shape:
        raise ValueError(f"logit shapes differ: {tuple(logits_p.shape)} vs {tuple(logits_q.shape)}")
    log_p = torch.log_softmax(logits_p.detach().double(), -1)
    log_q = torch.log_softmax(logits_q.detach().double(), -1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0.0)
    if mask is None:
        return float(kl.mean())
    m = mask.to(kl.device).bool()
    if not bool(m.any()):
        return float("nan")
    return float(kl[m].mean())


# ---------------------------------------------------------------------------- aggregation
def normalise_concept(score: Any, baseline: Any) -> Any:
    """Concept gain normalised to [0, 1]: clip((C - C0) / (1 - C0), 0, 1); 0 where C0 == 1."""
    c = np.asarray(score, dtype=np.float64)
    c0 = np.asarray(baseline, dtype=np.float64)
    room = 1.0 - c0
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(room > 0, (c - c0) / np.where(room > 0, room, 1.0), 0.0)
    out = np.clip(out, 0.0, 1.0)
    return float(out) if out.ndim == 0 else out


def harmonic_mean(*scores: Any, strict: bool = True) -> Any:
    """Harmonic mean of scores in [0, 1], elementwise. strict: 0 if any score is <= 0 (AxBench);
    non-strict ignores nothing but also returns 0 there (the limit). nan propagates."""
    if not scores:
        raise ValueError("harmonic_mean needs at least one score")
    arrays = np.broadcast_arrays(*[np.asarray(s, dtype=np.float64) for s in scores])
    stacked = np.stack(arrays)
    nan = np.isnan(stacked).any(0)
    positive = (stacked > 0).all(0)
    with np.errstate(divide="ignore"):
        hm = len(scores) / np.where(stacked > 0, 1.0 / np.where(stacked > 0, stacked, 1.0), np.inf).sum(0)
    out = np.where(positive, hm, 0.0)
    out = np.where(nan, np.nan, out)
    return float(out) if out.ndim == 0 else out


def steerability(alphas: Sequence[float | int], propensity: Any, tol: float = 1e-12) -> dict[str, Any]:
    """Slope of propensity against alpha (Tan et al. 2024, "steerability").

    propensity: [n_prompts, n_alphas] (or [n_alphas]). Returns ``slope`` (mean of the per-prompt
    least-squares slopes), ``slopes`` [n_prompts], ``wrong_way`` (share of prompts whose slope is
    below -tol) and ``mean_slope`` (the slope of the mean propensity, equal to ``slope``).
    Prompts with a nan anywhere are left out.
    """
    x = np.asarray(alphas, dtype=np.float64)
    y = np.atleast_2d(np.asarray(propensity, dtype=np.float64))
    if y.shape[1] != x.shape[0]:
        raise ValueError(f"propensity has {y.shape[1]} columns for {x.shape[0]} alphas")
    if x.shape[0] < 2 or np.ptp(x) == 0:
        raise ValueError("steerability needs at least two distinct alphas")
    ok = ~np.isnan(y).any(1)
    y = y[ok]
    xc = x - x.mean()
    slopes = (y - y.mean(1, keepdims=True)) @ xc / (xc @ xc)
    if slopes.size == 0:
        return {"slope": float("nan"), "slopes": slopes, "wrong_way": float("nan"), "mean_slope": float("nan")}
    return {"slope": float(slopes.mean()), "slopes": slopes, "wrong_way": float(np.mean(slopes < -tol)),
            "mean_slope": float((y.mean(0) - y.mean()) @ xc / (xc @ xc))}


__all__ = [
    "NgramNaiveBayes", "char_ngrams", "characteristic_tokens", "concept_score", "distinct_n", "fluency_score",
    "harmonic_mean", "mean_token_kl", "normalise_concept", "set_logprob", "steerability",
]
