"""Bounded top-k contexts per unit, merged batch by batch and across processes.

Top-k contexts are kept in a [G, E*E, k] buffer per group, merged batch by batch with the sparse
entries. A context is identified by ``key = doc << 24 | pos`` (doc = global document id of the
run, pos = position in the document); ties in score are broken by the smaller key, so the result
does not depend on the order in which batches arrive or on the number of processes. (Batch
composition can still move the routing factors themselves by float rounding, ~1e-7.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from monet_interp.stats.collectives import all_gather_topk
from monet_interp.stats.stream import POS_BITS, POS_MASK


def _unit_score_order(unit: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """int64 that sorts ascending by unit, then descending by float32 score."""
    bits = score.contiguous().view(torch.int32).long()
    monotone = torch.where(bits >= 0, bits + (1 << 31), (1 << 31) - 1 - (bits & 0x7FFFFFFF))  # float order
    return (unit.long() << 32) | ((1 << 32) - 1 - monotone)


def merge_topk(scores: torch.Tensor, keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top k along the last axis by (score descending, key ascending). Empty slots: -inf / -1."""
    order = torch.argsort(keys, dim=-1, stable=True)
    scores, keys = scores.gather(-1, order), keys.gather(-1, order)
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)
    return scores.gather(-1, order)[..., :k], keys.gather(-1, order)[..., :k]


class TopKBuffer:
    """Bounded top-k contexts of ``n_units`` units: scores [n, k] (sorted, -inf empty) and keys."""

    def __init__(self, n_units: int, k: int, device: torch.device):
        self.k = k
        self.score = torch.full((n_units, k), -math.inf, dtype=torch.float32, device=device)
        self.key = torch.full((n_units, k), -1, dtype=torch.long, device=device)
        self.kth = torch.full((n_units,), -math.inf, dtype=torch.float32, device=device)  # = score[:, -1]

    def update(self, unit: torch.Tensor, score: torch.Tensor, key: torch.Tensor) -> None:
        """Merge candidate entries (each (unit, key) at most once, and not already held)."""
        if self.k == 0 or unit.numel() == 0:
            return
        keep = score >= self.kth.index_select(0, unit)
        if not bool(keep.all()):
            unit, score, key = unit[keep], score[keep], key[keep]
        if unit.numel() == 0:
            return
        score = score.float() + 0.0  # (-0.0 -> +0.0)
        composite = _unit_score_order(unit, score)
        order = torch.argsort(composite)  # (unit asc, score desc); ties in any order
        unit_s, comp_s = unit[order], composite[order]
        rank = torch.arange(unit.numel(), device=unit.device) - torch.searchsorted(unit_s, unit_s)
        sel = rank < self.k
        # The kept set is exact unless a tie straddles the k-th place (then the smaller keys must
        # win): only then pay for a stable sort by key first.
        cut = (rank[1:] == self.k) & (comp_s[1:] == comp_s[:-1])
        if bool(cut.any()):
            order = torch.argsort(key, stable=True)
            order = order.index_select(0, torch.argsort(composite.index_select(0, order), stable=True))
        unit, score, key = unit[order], score[order], key[order]
        unit, score, key, rank = unit[sel], score[sel], key[sel], rank[sel]
        touched, row = torch.unique_consecutive(unit, return_inverse=True)
        width = int(rank.max()) + 1  # candidates per unit, at most k
        new_s = torch.full((touched.numel(), width), -math.inf, dtype=torch.float32, device=unit.device)
        new_k = torch.full((touched.numel(), width), -1, dtype=torch.long, device=unit.device)
        new_s[row, rank] = score
        new_k[row, rank] = key
        s, kk = merge_topk(torch.cat([self.score[touched], new_s], 1), torch.cat([self.key[touched], new_k], 1), self.k)
        self.score[touched] = s
        self.key[touched] = kk
        self.kth[touched] = s[:, -1]

    def update_dense(self, acts: torch.Tensor, key: torch.Tensor) -> None:
        """Candidates from dense activations [T, n] of tokens with keys [T]."""
        if self.k == 0 or acts.numel() == 0:
            return
        t, u = (acts >= self.kth[None, :]).nonzero(as_tuple=True)
        self.update(u, acts[t, u], key[t])

    def reduce(self) -> None:
        """Merge the buffers of all ranks (torch.distributed); a no-op in one process."""
        self.score, self.key = all_gather_topk(self.score, self.key, self.k, merge_topk)
        if self.k:
            self.kth = self.score[:, -1].contiguous()


def contexts_frame(score: np.ndarray, key: np.ndarray, labels: Sequence[str], doc_label: np.ndarray,
                   doc_index: np.ndarray):
    """DataFrame of top-k contexts (rank, score, label, doc, pos, doc_global) from one buffer row."""
    import pandas as pd

    ok = key >= 0
    score, key = score[ok], key[ok]
    doc = key >> POS_BITS
    return pd.DataFrame({
        "rank": np.arange(len(score)),
        "score": score.astype(np.float64),
        "label": [labels[int(doc_label[d])] for d in doc],
        "doc": doc_index[doc].astype(np.int64),
        "pos": (key & POS_MASK).astype(np.int64),
        "doc_global": doc.astype(np.int64),
    })
