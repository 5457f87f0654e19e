"""Shared state of one unlearning run: every label's windows, the clean metrics and the per-label
statistics of each unit set (cached), and the timing."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from monet_interp.analyses.unlearning.config import METRICS, UnlearningConfig, UnlearningError
from monet_interp.analyses.unlearning.methods import Method
from monet_interp.evaluation import (
    EvalSet,
    bytes_per_predicted_token,
    common_tokens,
    evaluate_arrays,
    token_byte_lengths,
    token_windows,
)
from monet_interp.stats import label_statistics
from monet_interp.units import ExpertUnits, Unit, model_name


@dataclass
class LabelData:
    label: str
    kind: str
    common: torch.Tensor
    stat_windows: torch.Tensor
    iter_windows: torch.Tensor
    sets: dict[str, EvalSet]  # roles: curve_forget, curve_retain, test_forget, test_retain


class Sweep:
    """Shared state of one run: label data, cached clean metrics and statistics, timing."""

    ROLES = ("curve_forget", "curve_retain", "test_forget", "test_retain")

    def __init__(self, corpus: Any, labels: list[str], config: UnlearningConfig, byte_lengths: torch.Tensor | None,
                 progress: bool):
        self.corpus, self.labels, self.config = corpus, labels, config
        self.byte_lengths = byte_lengths
        self.progress = progress
        self.data: dict[str, LabelData] = {}
        self.notes: list[str] = []
        self.timing = {"statistics_s": 0.0, "evaluation_s": 0.0}
        self._clean: dict[tuple[int, str], np.ndarray] = {}
        self._stats: dict[int, dict[str, torch.Tensor]] = {}
        self.clean_rows: list[pd.DataFrame] = []
        self.n_evaluated_tokens = 0

    def log(self, message: str) -> None:
        if self.progress:
            print(f"[unlearning] {message}", flush=True)

    # ---------------------------------------------------------------- data
    def prepare(self) -> None:
        c = self.config
        seq = c.seq_len
        sizes = {"curve_forget": (c.select_split, c.curve_forget_tokens),
                 "curve_retain": (c.select_split, c.curve_retain_tokens),
                 "test_forget": (c.eval_split, c.eval_forget_tokens),
                 "test_retain": (c.eval_split, c.eval_tokens)}
        for lab in self.labels:
            common = common_tokens(self.corpus, lab, c.skip_common, c.stat_split)
            stat = token_windows(self.corpus, lab, c.stat_split, c.stat_tokens, seq)
            n_iter = max(1, math.ceil(c.iter_stat_tokens / seq))
            sets = {}
            for role, (split, n_tokens) in sizes.items():
                bpt = bytes_per_predicted_token(self.corpus, lab, split) if self.byte_lengths is None else 1.0
                sets[role] = EvalSet(lab, token_windows(self.corpus, lab, split, n_tokens, seq), common, bpt)
            self.data[lab] = LabelData(lab, self.corpus.label_kind(lab), common, stat, stat[:n_iter], sets)

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, model: Any, sets: list[EvalSet]) -> np.ndarray:
        """[n_sets, len(METRICS)] metrics (columns in METRICS order)."""
        t0 = time.perf_counter()
        bos = getattr(model.cfg, "bos_token_id", None)
        out = evaluate_arrays(model, sets, batch_size=self.config.batch_size, bos_token_id=bos,
                              byte_lengths=self.byte_lengths)
        self.timing["evaluation_s"] += time.perf_counter() - t0
        self.n_evaluated_tokens += int(out["tokens"].sum())
        return np.stack([out[m] for m in METRICS], axis=1)

    def sets(self, forget: str, phase: str) -> list[EvalSet]:
        """Every label's set for ``phase`` ("curve" or "test"): the big one for ``forget``."""
        return [self.data[lab].sets[f"{phase}_forget" if lab == forget else f"{phase}_retain"] for lab in self.labels]

    def clean(self, model: Any, role: str) -> np.ndarray:
        """Clean metrics [labels, METRICS] of a model on every label's ``role`` set (cached)."""
        key = (id(model), role)
        if key not in self._clean:
            values = self.evaluate(model, [self.data[lab].sets[role] for lab in self.labels])
            self._clean[key] = values
            if role == "test_retain":
                frame = pd.DataFrame(values, columns=list(METRICS))
                frame.insert(0, "model", model_name(model))
                frame.insert(1, "label", self.labels)
                frame.insert(2, "kind", [self.data[lab].kind for lab in self.labels])
                frame.insert(3, "tokens", [int(self.data[lab].sets[role].windows.shape[0] * self.config.seq_len)
                                           for lab in self.labels])
                self.clean_rows.append(frame)
        return self._clean[key]

    def measure(self, units: Unit, forget: str, removed: torch.Tensor, phase: str) -> tuple[np.ndarray, np.ndarray]:
        """(edited, clean) metrics [labels, METRICS] with ``removed`` units removed (``phase`` sets)."""
        model = units.model
        with units.removal(removed):
            edited = self.evaluate(model, self.sets(forget, phase))
        f = self.labels.index(forget)
        clean = self.clean(model, f"{phase}_retain").copy()
        clean[f] = self.clean(model, f"{phase}_forget")[f]
        return edited, clean

    def curve_point(self, units: Unit, forget: str, removed: torch.Tensor) -> dict[str, float]:
        edited, clean = self.measure(units, forget, removed, "curve")
        f = self.labels.index(forget)
        others = np.array([k for k in range(len(self.labels)) if k != f], dtype=np.int64)
        delta = edited - clean
        row: dict[str, float] = {}
        for c, metric in enumerate(METRICS):
            row[f"forget_{metric}"] = float(edited[f, c])
            row[f"d_forget_{metric}"] = float(delta[f, c])
            row[f"retain_{metric}"] = float(edited[others, c].mean())
            row[f"d_retain_{metric}"] = float(delta[others, c].mean())
        return row

    # ---------------------------------------------------------------- statistics
    def statistics(self, units: Unit) -> dict[str, torch.Tensor]:
        """{"mean": [L, N], "freq": [L, N]} over every label's statistics windows (cached per unit set)."""
        key = id(units)
        if key not in self._stats:
            t0 = time.perf_counter()
            windows = {lab: self.data[lab].stat_windows[:, :-1] for lab in self.labels}
            self._stats[key] = label_statistics(units.model, units, windows, self.config.batch_size).as_dict()
            self.timing["statistics_s"] += time.perf_counter() - t0
            self.log(f"statistics of {units.name}: {units.n_units} units, {time.perf_counter() - t0:.1f} s")
        return self._stats[key]

    def iter_statistics(self, units: Unit, removed: torch.Tensor, stat_name: str) -> torch.Tensor:
        """[L, N] statistics on the (smaller) iterative windows with ``removed`` already removed."""
        t0 = time.perf_counter()
        windows = {lab: self.data[lab].iter_windows[:, :-1] for lab in self.labels}
        with units.removal(removed):
            stats = label_statistics(units.model, units, windows, self.config.batch_size).as_dict()
        self.timing["statistics_s"] += time.perf_counter() - t0
        return stats[stat_name]

    def cached_statistics(self, units: Unit) -> dict[str, torch.Tensor] | None:
        return self._stats.get(id(units))

    def set_statistics(self, units: Unit, stats: dict[str, torch.Tensor]) -> None:
        self._stats[id(units)] = stats



def default_byte_lengths(corpus: Any, models: Sequence[Any]) -> torch.Tensor | None:
    """Per-token UTF-8 byte lengths from the corpus tokenizer (or a model's), or None."""
    tokenizer = None
    if hasattr(corpus, "tokenizer") and callable(corpus.tokenizer):
        try:
            tokenizer = corpus.tokenizer()
        except Exception:  # noqa: BLE001 - a corpus without a readable tokenizer: fall back
            tokenizer = None
    if tokenizer is None:
        tokenizer = next((m.tokenizer for m in models if getattr(m, "tokenizer", None) is not None), None)
    if tokenizer is None:
        return None
    vocab = max(int(m.cfg.d_vocab) for m in models)
    return token_byte_lengths(tokenizer, vocab)



def use_routing_stats(sweep: Sweep, methods: list[Method], model: Any, rs: Any, labels: list[str]) -> None:
    """Thin adapter: statistics of a RoutingStats (monet_interp.stats) for group-scope, all-heads
    expert units of ``model``."""
    for m in methods:
        units = m.units
        if not (isinstance(units, ExpertUnits) and units.model is model and units.scope == "group"
                and units.heads == "all" and units.all_experts):
            continue
        missing = [lab for lab in labels if lab not in rs.labels]
        if missing:
            raise UnlearningError(f"routing_stats lacks labels {missing}")
        idx = [rs.label_index(lab) for lab in labels]
        mean = torch.from_numpy(np.asarray(rs.mean_score())[idx][:, units.slots]).reshape(len(labels), -1)
        freq = torch.from_numpy(np.asarray(rs.frequency())[idx][:, units.slots]).reshape(len(labels), -1)
        sweep.set_statistics(units, {"mean": mean.double(), "freq": freq.double()})
        sweep.notes.append(f"statistics of {units.name} from RoutingStats (split {rs.split}, "
                           f"fire_threshold {rs.fire_threshold})")



__all__ = ["LabelData", "Sweep", "default_byte_lengths", "use_routing_stats"]
