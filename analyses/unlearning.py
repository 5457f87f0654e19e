"""Unlearning by deleting units: MONET experts against fair baselines, on held-out text per label.

    from monet_interp.analyses.unlearning import run_unlearning, default_methods
    result = run_unlearning(model, corpus, forget=["python", "news_sport"], methods=["2x", "ratio", "random"])
    result.summary                      # one row per (method, forgotten label): dTarget, dOthers, ...
    result.table("MONET 2x")            # paper layout: rows = forgotten label, columns = every label
    html = result.html_section()        # self-contained HTML fragment (tables + plotly figures)

What is removed (a *unit set*, :class:`UnitSet`):

- :class:`ExpertUnits`: MONET experts (i, j), pruned exactly through the edit API
  (``model.edit_experts``). Scope: ``scope="group"`` (default; expert (i, j) of routing group g,
  removed on every layer of the group, which all share its routing) or ``scope="layer"`` (one
  layer); ``heads="all"`` (default; the head-summed weight) or ``heads="per-head"`` (unit = one
  head's weight g1[h,i] g2[h,j]).
- ``monet_interp.analyses.baselines``: dense MLP neurons (zeroed) and SAE features on MLP outputs
  (negative clamping with the SAE error term kept; or the spliced reconstruction).

How units are chosen (``rule``), from per-label statistics I(D, u) over training-split text
(I = mean activation, for experts the mean routing score r_e(D) = mean_t sum_h g1 g2, or firing
frequency; ``statistic="mean" | "freq"``):

- ``"2x"``: MONET's rule. u is specialised in the forget label F iff I(F, u) > 0 and
  I(F, u) >= 2 * max over every other label D of I(D, u). All such units are removed (optionally,
  ``twox_prefixes``, a curve over prefixes ordered by the skew I(F) / max_D I(D) is measured too).
- ``"ratio"``: selective pruning (Pochinkov & Schoots 2024): score(u) = I(F, u) / (I(R, u) + eps)
  with I(R) the mean over the retain labels (every other label, equal weight) and
  eps = ratio_eps * mean_u I(R, u) (scale-free). The top fraction of all units is removed; the
  curve runs over ``fractions``.
- ``"ratio-iter"``: the same score, removing ``iter_step`` of the units per step and recomputing the
  statistics with the units removed so far already removed (``iter_steps`` steps).
- ``"random"``: uniformly random units, as many as another method removed for the same label
  (``match``; by default the first non-random method on the same unit set) - the control.
- ``"same"``: exactly the units another method (``match``) removed, on a unit set with the same
  ids - e.g. the same SAE features with the reconstruction spliced in instead of the error term
  kept, which isolates what splicing costs.

Metrics (every label, held-out text; accuracies in percentage points, loss in bits per byte):
next-token top-1 / top-10 accuracy, optionally skipping targets among the label's 50 most common
training tokens (``*_skip`` columns), and bits per byte = summed next-token loss (nats) / ln 2 /
UTF-8 bytes of the predicted tokens (exact per-token byte lengths from the corpus tokenizer; or,
without one, the split's bytes per predicted token from the corpus manifest). bos is never a
target. Token budgets per label are bounded (parameters), evaluation is batched under no_grad.
Every delta is measured against the *clean* model (no hook, no edit), so a method that costs
something before any unit is removed (a spliced SAE reconstruction) pays for it.

Protocol: statistics on ``stat_split`` ("train"), curves and the choice of the operating point on
``select_split`` ("val"), the reported numbers (tables, summary) on ``eval_split`` ("test").
The operating point of a curve method is the point with the largest forget top-1 drop whose
retain top-1 drop is <= ``retain_budget`` points (1.0); the 2x rule's point is its full set; a
random control's point is the count of the method it matches. The forgotten label is measured on
more tokens (``eval_forget_tokens``) than each other label (``eval_tokens``); dOthers averages
over many labels, so it needs fewer per label.

Summary columns (per method and forgotten label): ``d_target_*`` (change on the forgotten label),
``d_others_*`` (mean change over every other label), ``d_others_same_kind_*`` (other labels of
the same kind, code or natural), ``selectivity_*`` = d_target - d_others. Accuracy deltas are
negative when accuracy drops; bits-per-byte deltas are positive when the loss rises.
"""

from __future__ import annotations

import contextlib
import html as html_lib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

RULES = ("2x", "ratio", "ratio-iter", "random", "same")
STATISTICS = ("mean", "freq")
SCOPES = ("group", "layer")
HEAD_MODES = ("all", "per-head")
METRICS = ("top1", "top10", "bpb", "top1_skip", "top10_skip", "loss")
DEFAULT_FRACTIONS = (0.005, 0.01, 0.02, 0.04, 0.08)
LN2 = math.log(2.0)
CHUNK_ELEMENTS = 1 << 22


class UnlearningError(ValueError):
    """Bad arguments, or a model and corpus that do not fit together."""


# ============================================================================================
# corpus access
# ============================================================================================


class InMemoryCorpus:
    """A corpus held in memory, with the reading interface of :class:`monet_interp.data.corpus.Corpus`
    that this module uses (labels, label_kind, tokens, stats). For tests and for token streams
    that do not come from a built corpus directory.

    streams: {label: {split: 1-D int array of tokens}}; kinds: {label: "code" | "natural"};
    bytes_per_token: bytes of text per predicted token (a number, or {label: number}).
    """

    def __init__(self, streams: dict[str, dict[str, Any]], kinds: dict[str, str] | None = None,
                 bytes_per_token: float | dict[str, float] = 1.0, splits: Sequence[str] = ("train", "val", "test")):
        self._streams = {lab: {sp: np.asarray(arr, dtype=np.int64) for sp, arr in by_split.items()}
                         for lab, by_split in streams.items()}
        self.labels = list(self._streams)
        self.splits = tuple(splits)
        self._kinds = dict(kinds or {})
        self._bpt = bytes_per_token

    def label_kind(self, label: str) -> str:
        return self._kinds.get(label, "natural")

    def tokens(self, label: str, split: str = "train") -> np.ndarray:
        if label not in self._streams:
            raise KeyError(f"label {label!r} is not in this corpus; labels: {', '.join(self.labels)}")
        return self._streams[label].get(split, np.zeros(0, dtype=np.int64))

    def documents(self, label: str, split: str = "train") -> list[np.ndarray]:
        """The split's stream as one document (what monet_interp.stats reads)."""
        stream = self.tokens(label, split)
        return [stream] if len(stream) else []

    def stats(self, label: str, split: str) -> dict[str, int]:
        n = len(self.tokens(label, split))
        bpt = self._bpt[label] if isinstance(self._bpt, dict) else self._bpt
        return {"docs": 0, "tokens": n, "bytes": int(round(n * float(bpt)))}


def resolve_labels(corpus: Any, spec: str | Sequence[str] | None) -> list[str]:
    """Label names from a spec: None / "all" (every label), "code" / "natural" (by kind), a
    comma-separated string, or a list (which may itself contain "code" / "natural")."""
    if spec is None:
        return list(corpus.labels)
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in items:
        if not item:
            continue
        if item == "all":
            found = list(corpus.labels)
        elif item in ("code", "natural"):
            found = [lab for lab in corpus.labels if corpus.label_kind(lab) == item]
        elif item in corpus.labels:
            found = [item]
        else:
            raise UnlearningError(f"unknown label {item!r}; labels: {', '.join(corpus.labels)} "
                                  f"(or 'all', 'code', 'natural')")
        out += [lab for lab in found if lab not in out]
    if not out:
        raise UnlearningError(f"no labels selected by {spec!r}")
    return out


def bytes_per_predicted_token(corpus: Any, label: str, split: str) -> float:
    """Bytes of text per predicted token of a split: bytes / (tokens - docs) (every token except a
    document's bos is predicted; bos/eos carry no bytes)."""
    s = corpus.stats(label, split)
    predicted = s["tokens"] - s.get("docs", 0)
    if predicted <= 0 or s["bytes"] <= 0:
        raise UnlearningError(f"label {label!r} has no text in split {split!r}")
    return s["bytes"] / predicted


def token_windows(corpus: Any, label: str, split: str, n_tokens: int, seq_len: int) -> torch.Tensor:
    """[n, seq_len + 1] int64 windows of the label's token stream, n = ceil(n_tokens / seq_len),
    starts evenly spaced over the whole split (deterministic). Windows may cross documents."""
    stream = corpus.tokens(label, split)
    length = len(stream)
    if length < seq_len + 1:
        raise UnlearningError(f"label {label!r} has {length} tokens in split {split!r}, fewer than "
                              f"seq_len + 1 = {seq_len + 1}; lower seq_len")
    n = max(1, math.ceil(n_tokens / seq_len))
    starts = np.unique(np.linspace(0, length - seq_len - 1, n).round().astype(np.int64))
    out = np.stack([np.asarray(stream[s:s + seq_len + 1], dtype=np.int64) for s in starts])
    return torch.from_numpy(out)


def common_tokens(corpus: Any, label: str, k: int, split: str = "train", max_tokens: int = 2_000_000) -> torch.Tensor:
    """The k most frequent token ids of a label's split (its first ``max_tokens`` tokens)."""
    if k <= 0:
        return torch.zeros(0, dtype=torch.long)
    stream = np.asarray(corpus.tokens(label, split)[:max_tokens], dtype=np.int64)
    if stream.size == 0:
        return torch.zeros(0, dtype=torch.long)
    counts = np.bincount(stream)
    order = np.argsort(-counts, kind="stable")[:k]
    return torch.from_numpy(order[counts[order] > 0].astype(np.int64))


# ============================================================================================
# evaluation
# ============================================================================================


@dataclass
class EvalSet:
    """Held-out windows of one label and what is needed to score them."""

    label: str
    windows: torch.Tensor  # int64 [n, seq + 1]
    common: torch.Tensor  # int64 [k] the label's most common training tokens (skipped in *_skip)
    bytes_per_token: float


def _forward_logits(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    return model(tokens, return_type="logits")


@torch.no_grad()
def evaluate_arrays(model: Any, sets: Sequence[EvalSet], *, batch_size: int = 16, bos_token_id: int | None = None,
                    vocab_size: int | None = None, byte_lengths: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """The metrics of :func:`evaluate_sets` as {column: float64 [n_sets]} arrays (no pandas)."""
    seq = {s.windows.shape[1] for s in sets}
    if len(seq) != 1:
        raise UnlearningError(f"all evaluation windows must have the same length, got {sorted(seq)}")
    vocab = int(vocab_size if vocab_size is not None else model.cfg.d_vocab)
    rows = torch.cat([s.windows for s in sets])
    if rows.numel() and int(rows.max()) >= vocab:
        raise UnlearningError(f"token id {int(rows.max())} is out of range for the model's vocabulary ({vocab}): "
                              f"the corpus was tokenised with a different tokenizer")
    owner = torch.cat([torch.full((len(s.windows),), k, dtype=torch.long) for k, s in enumerate(sets)])
    common = torch.zeros(len(sets), vocab, dtype=torch.bool)
    for k, s in enumerate(sets):
        if s.common.numel():
            common[k, s.common[s.common < vocab]] = True
    device = model.device if hasattr(model, "device") else torch.device("cpu")
    sums = torch.zeros(len(sets), 8, dtype=torch.float64)  # n, nll, c1, c10, n_skip, c1_skip, c10_skip, bytes
    if byte_lengths is not None and byte_lengths.numel() < vocab:
        raise UnlearningError(f"byte_lengths covers {byte_lengths.numel()} tokens, the vocabulary has {vocab}")
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size].to(device)
        who = owner[start:start + batch_size]
        logits = _forward_logits(model, batch[:, :-1]).float()
        target = batch[:, 1:]
        logp = torch.log_softmax(logits, dim=-1)
        nll = -logp.gather(-1, target[..., None]).squeeze(-1)
        top10 = logits.topk(min(10, logits.shape[-1]), dim=-1).indices
        c1 = top10[..., 0] == target
        c10 = (top10 == target[..., None]).any(-1)
        valid = torch.ones_like(target, dtype=torch.bool)
        if bos_token_id is not None:
            valid &= target != bos_token_id
        keep = valid & ~common[who][torch.arange(len(who))[:, None], target.cpu()].to(valid.device)
        n_bytes = (byte_lengths.to(target.device)[target] * valid).sum(1) if byte_lengths is not None else valid.sum(1)
        per_row = torch.stack([valid.sum(1), (nll * valid).sum(1), (c1 & valid).sum(1), (c10 & valid).sum(1),
                               keep.sum(1), (c1 & keep).sum(1), (c10 & keep).sum(1), n_bytes], dim=1).double().cpu()
        sums.index_add_(0, who, per_row)
    sums = sums.numpy()
    n = np.maximum(sums[:, 0], 1)
    n_skip = np.maximum(sums[:, 4], 1)
    loss = sums[:, 1] / n
    if byte_lengths is not None:
        bpb = sums[:, 1] / LN2 / np.maximum(sums[:, 7], 1)
    else:
        bpb = loss / LN2 / np.array([s.bytes_per_token for s in sets], dtype=np.float64)
    return {"tokens": sums[:, 0], "loss": loss, "bpb": bpb, "top1": 100 * sums[:, 2] / n,
            "top10": 100 * sums[:, 3] / n, "top1_skip": 100 * sums[:, 5] / n_skip,
            "top10_skip": 100 * sums[:, 6] / n_skip, "tokens_skip": sums[:, 4]}


def evaluate_sets(model: Any, sets: Sequence[EvalSet], *, batch_size: int = 16, bos_token_id: int | None = None,
                  vocab_size: int | None = None, byte_lengths: torch.Tensor | None = None) -> pd.DataFrame:
    """Next-token metrics of ``model`` on each EvalSet (one row per set, index = label).

    Columns: tokens, loss (nats/token), bpb (bits per byte), top1, top10 (percent),
    top1_skip, top10_skip (percent, targets among the label's common tokens left out), tokens_skip.
    Bits per byte: with ``byte_lengths`` ([vocab] UTF-8 bytes of each token) the exact bytes of
    the predicted tokens; otherwise each set's ``bytes_per_token``. Runs every window of every set
    in batches of ``batch_size`` under no_grad.
    """
    columns = ["tokens", "loss", "bpb", "top1", "top10", "top1_skip", "top10_skip", "tokens_skip"]
    if not sets:
        return pd.DataFrame(columns=columns)
    arrays = evaluate_arrays(model, sets, batch_size=batch_size, bos_token_id=bos_token_id, vocab_size=vocab_size,
                             byte_lengths=byte_lengths)
    frame = pd.DataFrame({c: arrays[c] for c in columns}, index=pd.Index([s.label for s in sets], name="label"))
    return frame.astype({"tokens": "int64", "tokens_skip": "int64"})


# ============================================================================================
# unit sets
# ============================================================================================


class UnitSet:
    """Units that can be measured per label and removed.

    Subclasses set ``model``, ``name``, ``kind`` and ``n_units`` and implement
    :meth:`statistics` (per-unit mean activation and firing frequency over the given windows) and
    :meth:`removal` (a context manager in which the given units are removed from ``model``).
    """

    model: Any
    name: str = "units"
    kind: str = "unit"
    n_units: int = 0

    def statistics(self, windows: torch.Tensor, batch_size: int = 16) -> dict[str, torch.Tensor]:
        """{"mean": float64 [n_units], "freq": float64 [n_units]} over every input position of
        ``windows`` ([n, seq + 1]; the inputs are windows[:, :-1])."""
        raise NotImplementedError

    def removal(self, units: torch.Tensor) -> contextlib.AbstractContextManager:
        """Context manager removing ``units`` (int64 flat unit ids) from ``self.model``."""
        raise NotImplementedError

    def describe(self, units: torch.Tensor) -> pd.DataFrame:
        """One row per unit id, naming it."""
        return pd.DataFrame({"unit": units.tolist()})

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "n_units": self.n_units}


def _batches(windows: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(windows), batch_size):
        yield windows[start:start + batch_size, :-1]


class ExpertUnits(UnitSet):
    """MONET experts as removable units (pruned exactly with ExpertEdit(i, j, "prune")).

    scope: "group" (unit = expert (i, j) of a routing group, pruned on every layer of the group;
    default) or "layer" (unit = expert (i, j) of one layer). heads: "all" (the head-summed weight;
    default) or "per-head" (unit = the weight of one head). groups / layers restrict the units to
    some routing groups / layers. Flat unit id = ((slot * H_units) + h) * E^2 + i * E + j, slot
    indexing the selected groups or layers, H_units = H per head else 1.

    Statistics: mean routing score (sum_h g1[h,i] g2[h,j], or one head's g1 g2 per head) and
    firing frequency (share of tokens whose score exceeds ``fire_threshold``). A layer's routing is
    its group's, so with scope="layer" the statistics of a group's layers coincide.
    """

    kind = "expert"

    def __init__(self, model: Any, scope: str = "group", heads: str = "all", groups: Sequence[int] | None = None,
                 layers: Sequence[int] | None = None, fire_threshold: float = 0.0, name: str | None = None):
        cfg = model.cfg
        if not hasattr(cfg, "moe_experts"):
            raise UnlearningError(f"{type(model).__name__} has no experts (ExpertUnits needs a HookedMONET)")
        if scope not in SCOPES:
            raise UnlearningError(f"scope must be one of {SCOPES}, got {scope!r}")
        if heads not in HEAD_MODES:
            raise UnlearningError(f"heads must be one of {HEAD_MODES}, got {heads!r}")
        self.model, self.scope, self.heads = model, scope, heads
        self.E, self.H = cfg.moe_experts, cfg.moe_heads
        self.fire_threshold = float(fire_threshold)
        if scope == "group":
            if layers is not None:
                raise UnlearningError("layers= restricts scope='layer'; with scope='group' use groups=")
            self.slots = list(range(cfg.num_routers)) if groups is None else [int(g) for g in groups]
            for g in self.slots:
                if not 0 <= g < cfg.num_routers:
                    raise UnlearningError(f"routing group {g} does not exist ({cfg.num_routers} groups)")
            self.slot_layers = [cfg.layers_of_group(g)[0] for g in self.slots]
        else:
            chosen = list(range(cfg.num_hidden_layers)) if layers is None else [int(x) for x in layers]
            if groups is not None:
                keep = {int(g) for g in groups}
                chosen = [x for x in chosen if cfg.group_of_layer(x) in keep]
            for x in chosen:
                if not 0 <= x < cfg.num_hidden_layers:
                    raise UnlearningError(f"layer {x} does not exist ({cfg.num_hidden_layers} layers)")
            self.slots = chosen
            self.slot_layers = list(chosen)
        if not self.slots:
            raise UnlearningError("no routing group or layer selected")
        self.h_units = self.H if heads == "per-head" else 1
        self.per_slot = self.h_units * self.E * self.E
        self.n_units = len(self.slots) * self.per_slot
        base = _model_name(model)
        scope_txt = "" if (scope, heads) == ("group", "all") else f" [{scope}, {heads} heads]"
        self.name = name or f"{base} experts{scope_txt}"

    # ---------------------------------------------------------------- ids
    def unravel(self, units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(slot, head (or -1), i, j) of flat unit ids."""
        units = torch.as_tensor(units, dtype=torch.long)
        slot = units // self.per_slot
        rest = units % self.per_slot
        head = rest // (self.E * self.E) if self.heads == "per-head" else torch.full_like(rest, -1)
        pair = rest % (self.E * self.E)
        return slot, head, pair // self.E, pair % self.E

    def edits(self, units: torch.Tensor) -> list:
        """The ExpertEdit prunes that remove ``units`` (per-head units of one expert share an edit)."""
        from monet_interp.editing import ExpertEdit

        slot, head, i, j = (t.tolist() for t in self.unravel(units))
        grouped: dict[tuple[int, int, int], list[int]] = {}
        for s, h, a, b in zip(slot, head, i, j):
            grouped.setdefault((s, a, b), []).append(h)
        out = []
        for (s, a, b), hs in sorted(grouped.items()):
            where = {"group": self.slots[s]} if self.scope == "group" else {"layer": self.slots[s]}
            heads = None if self.heads == "all" else sorted(set(hs))
            out.append(ExpertEdit(a, b, "prune", heads=heads, **where))
        return out

    def removal(self, units: torch.Tensor) -> contextlib.AbstractContextManager:
        units = torch.as_tensor(units, dtype=torch.long)
        if units.numel() == 0:
            return contextlib.nullcontext()
        return self.model.edit_experts(self.edits(units))

    def describe(self, units: torch.Tensor) -> pd.DataFrame:
        slot, head, i, j = self.unravel(units)
        where = "group" if self.scope == "group" else "layer"
        frame = pd.DataFrame({"unit": torch.as_tensor(units).tolist(),
                              where: [self.slots[s] for s in slot.tolist()], "i": i.tolist(), "j": j.tolist(),
                              "flat_id": (i * self.E + j).tolist()})
        if self.heads == "per-head":
            frame.insert(2, "head", head.tolist())
        return frame

    def info(self) -> dict[str, Any]:
        return dict(super().info(), scope=self.scope, heads=self.heads, slots=self.slots, E=self.E, H=self.H)

    # ---------------------------------------------------------------- statistics
    @torch.no_grad()
    def statistics(self, windows: torch.Tensor, batch_size: int = 16) -> dict[str, torch.Tensor]:
        E, H = self.E, self.H
        n_slots = len(self.slots)
        score = torch.zeros(n_slots, self.h_units, E, E, dtype=torch.float64)
        fires = torch.zeros(n_slots, self.h_units, E, E, dtype=torch.float64)
        count = [0]
        captured: dict[int, torch.Tensor] = {}
        thr = self.fire_threshold

        def grab_row(slot: int):
            def hook(tensor: torch.Tensor, hook: Any) -> None:
                captured[slot] = tensor.detach()
            return hook

        def grab_col(slot: int):
            def hook(tensor: torch.Tensor, hook: Any) -> None:
                g1 = captured.pop(slot).reshape(-1, H, E).double()
                g2 = tensor.detach().reshape(-1, H, E).double()
                if self.heads == "per-head":
                    score[slot] += torch.einsum("thi,thj->hij", g1, g2).cpu()
                    fires[slot] += _count_fires(g1, g2, thr, per_head=True).cpu()
                else:
                    score[slot, 0] += torch.einsum("thi,thj->ij", g1, g2).cpu()
                    fires[slot, 0] += _count_fires(g1, g2, thr, per_head=False).cpu()
            return hook

        hooks = []
        for slot, layer in enumerate(self.slot_layers):
            hooks.append((f"blocks.{layer}.moe.hook_g_row", grab_row(slot)))
            hooks.append((f"blocks.{layer}.moe.hook_g_col", grab_col(slot)))
        stop = max(self.slot_layers) + 1
        device = self.model.device
        with self.model.hooks(fwd_hooks=hooks):
            for inputs in _batches(windows, batch_size):
                count[0] += inputs.numel()
                self.model(inputs.to(device), stop_at_layer=stop)
        n = max(count[0], 1)
        return {"mean": (score / n).flatten(), "freq": (fires / n).flatten()}


def _count_fires(g1: torch.Tensor, g2: torch.Tensor, threshold: float, per_head: bool) -> torch.Tensor:
    """Tokens whose score exceeds ``threshold``: [H, E, E] per head (score g1[h,i] g2[h,j]) or
    [E, E] for the head-summed score. Enumerates only the routed pairs of every (token, head)
    (k1 * k2 of them), so nothing of size [tokens, E, E] is formed."""
    n_tok, n_heads, n_exp = g1.shape
    e2 = n_exp * n_exp
    size = n_heads * e2 if per_head else e2
    out = torch.zeros(size, dtype=torch.float64, device=g1.device)
    if n_tok == 0:
        return out.view(n_heads, n_exp, n_exp) if per_head else out.view(n_exp, n_exp)
    k1 = max(1, int((g1 != 0).sum(-1).max()))
    k2 = max(1, int((g2 != 0).sum(-1).max()))
    step = max(1, CHUNK_ELEMENTS // (n_heads * k1 * k2 * 4))
    for s in range(0, n_tok, step):
        v1, i1 = g1[s:s + step].topk(k1, dim=-1)  # [t, H, k1]
        v2, j2 = g2[s:s + step].topk(k2, dim=-1)  # [t, H, k2]
        w = v1[..., :, None] * v2[..., None, :]  # [t, H, k1, k2]
        pair = i1[..., :, None] * n_exp + j2[..., None, :]
        if per_head:
            key = pair + (torch.arange(n_heads, device=g1.device) * e2)[None, :, None, None]
            fired = key[w > threshold]
        else:  # sum over heads per (token, pair) first, then threshold
            t = torch.arange(pair.shape[0], device=g1.device)[:, None, None, None]
            key = (t * e2 + pair).flatten()
            uniq, inverse = torch.unique(key, return_inverse=True)
            score = torch.zeros(len(uniq), dtype=w.dtype, device=w.device).index_add_(0, inverse, w.flatten())
            fired = uniq[score > threshold] % e2
        out += torch.bincount(fired, minlength=size).double()
    return out.view(n_heads, n_exp, n_exp) if per_head else out.view(n_exp, n_exp)


def _model_name(model: Any) -> str:
    path = getattr(model, "checkpoint_path", None)
    if path:
        return Path(str(path)).name
    return type(model).__name__.replace("Hooked", "")


# ============================================================================================
# selection rules
# ============================================================================================


def skew_2x(stats: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(I(target) [N], max over the other labels of I [N]) from per-label statistics [L, N]."""
    if stats.dim() != 2 or not 0 <= target < stats.shape[0]:
        raise UnlearningError(f"expected [labels, units] statistics and a label index, got {tuple(stats.shape)}, "
                              f"{target}")
    own = stats[target]
    others = torch.cat([stats[:target], stats[target + 1:]])
    rival = others.max(0).values if len(others) else torch.zeros_like(own)
    return own, rival


def select_2x(stats: torch.Tensor, target: int, factor: float = 2.0, min_value: float = 0.0) -> torch.Tensor:
    """MONET's rule: units u with I(target, u) > min_value and I(target, u) >= factor * max over the
    other labels of I(., u). Returned most skewed first (I(target) / rival; ties by I(target))."""
    own, rival = skew_2x(stats, target)
    chosen = ((own > min_value) & (own >= factor * rival)).nonzero().flatten()
    if chosen.numel() == 0:
        return chosen
    skew = own[chosen] / rival[chosen].clamp_min(1e-300)
    key = torch.stack([skew, own[chosen]], 1)
    order = sorted(range(len(chosen)), key=lambda k: (-float(key[k, 0]), -float(key[k, 1]), int(chosen[k])))
    return chosen[torch.tensor(order, dtype=torch.long)]


def ratio_scores(i_forget: torch.Tensor, i_retain: torch.Tensor, eps: float = 0.01, relative: bool = True) -> torch.Tensor:
    """Selective-pruning score I(F) / (I(R) + eps'), eps' = eps * mean(I(R)) when ``relative``
    (a scale-free eps; falls back to eps when I(R) is 0 everywhere), else eps."""
    scale = float(i_retain.mean()) if relative else 1.0
    eps_abs = eps * scale if scale > 0 else eps
    return i_forget / (i_retain + eps_abs)


def rank_units(scores: torch.Tensor, tiebreak: torch.Tensor | None = None,
               exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Unit ids by descending score (ties: larger ``tiebreak``, then smaller id), without ``exclude``."""
    n = scores.numel()
    tb = tiebreak if tiebreak is not None else torch.zeros_like(scores)
    ids = torch.arange(n)
    # lexsort: stable sorts from the least significant key up
    order = torch.argsort(-tb.double(), stable=True)
    order = order[torch.argsort(-scores.double()[order], stable=True)]
    if exclude is not None and exclude.numel():
        mask = torch.ones(n, dtype=torch.bool)
        mask[exclude] = False
        order = order[mask[order]]
    return ids[order]


def select_ratio(i_forget: torch.Tensor, i_retain: torch.Tensor, count: int, eps: float = 0.01,
                 exclude: torch.Tensor | None = None) -> torch.Tensor:
    """The ``count`` units with the largest selective-pruning score (see :func:`ratio_scores`)."""
    order = rank_units(ratio_scores(i_forget, i_retain, eps), tiebreak=i_forget, exclude=exclude)
    return order[:max(0, int(count))]


def select_random(n_units: int, count: int, seed: int = 0, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """``count`` distinct uniformly random unit ids (reproducible from ``seed``)."""
    gen = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(n_units, generator=gen)
    if exclude is not None and exclude.numel():
        mask = torch.ones(n_units, dtype=torch.bool)
        mask[exclude] = False
        order = order[mask[order]]
    return order[:max(0, min(int(count), len(order)))]


# ============================================================================================
# methods
# ============================================================================================


@dataclass
class Method:
    """One way to forget: a unit set, a selection rule and the statistic it ranks by.

    name: row label in the tables. rule: "2x", "ratio", "ratio-iter", "random" or "same".
    statistic: "mean" or "freq" (None: run_unlearning's default). fractions: curve grid for
    "ratio" (None: run_unlearning's). match: for "random", the name of the method whose count
    it copies (None: the first non-random method on the same unit set, else the fraction grid);
    for "same", the method whose units it removes (required). factor / min_value: the 2x rule's
    factor and the statistic a unit must exceed on the forget label (0: any activity).
    """

    name: str
    units: UnitSet
    rule: str = "ratio"
    statistic: str | None = None
    fractions: tuple[float, ...] | None = None
    match: str | None = None
    factor: float = 2.0
    min_value: float = 0.0

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise UnlearningError(f"rule must be one of {RULES}, got {self.rule!r}")
        if self.statistic is not None and self.statistic not in STATISTICS:
            raise UnlearningError(f"statistic must be one of {STATISTICS}, got {self.statistic!r}")
        if self.rule == "same" and self.match is None:
            raise UnlearningError(f"method {self.name!r}: rule 'same' needs match=<name of another method>")


def expert_methods(model: Any, rules: Sequence[str] = ("2x", "ratio", "random"), prefix: str | None = None,
                   **unit_kwargs: Any) -> list[Method]:
    """Methods on one MONET model's experts (shared ExpertUnits, so statistics are computed once)."""
    units = ExpertUnits(model, **unit_kwargs)
    prefix = prefix or units.name.replace(" experts", "")
    return [Method(f"{prefix} {rule}", units, rule) for rule in rules]


def default_methods(monet: Any, top1: Any = None, dense: Any = None, sae_bank: Any = None,
                    monet_rules: Sequence[str] = ("2x", "ratio", "random"), baseline_rule: str = "ratio",
                    sae_modes: Sequence[str] = ("error",)) -> list[Method]:
    """The sweep of the README: MONET (2x, ratio, random), top-1 MONET (2x), dense neurons and SAE
    features (error term kept) with the selective-pruning rule; with "spliced" in sae_modes also
    the same SAE features removed with the reconstruction spliced in. Models left None are skipped."""
    methods = expert_methods(monet, monet_rules, prefix="MONET-VD" if monet.cfg.is_vertical else "MONET-HD")
    for m in methods:
        if m.rule == "random":
            m.match = next((x.name for x in methods if x.rule == "2x"), None)
    if top1 is not None:
        methods += expert_methods(top1, ("2x",), prefix="top-1 MONET")
    if dense is not None:
        from monet_interp.analyses.baselines import NeuronUnits

        methods.append(Method(f"dense neurons {baseline_rule}", NeuronUnits(dense), baseline_rule))
    if sae_bank is not None:
        from monet_interp.analyses.baselines import SAEUnits

        error_name = f"SAE (error kept) {baseline_rule}"
        if "error" in sae_modes:
            methods.append(Method(error_name, SAEUnits(sae_bank, mode="error"), baseline_rule))
        if "spliced" in sae_modes:  # the same features with the reconstruction spliced in
            spliced = SAEUnits(sae_bank, mode="spliced")
            methods.append(Method("SAE (spliced) same features", spliced, "same", match=error_name)
                           if "error" in sae_modes else Method(f"SAE (spliced) {baseline_rule}", spliced, baseline_rule))
    return methods


def _resolve_methods(model: Any, methods: Sequence[Any]) -> list[Method]:
    out: list[Method] = []
    shared: dict[str, ExpertUnits] = {}
    for item in methods:
        if isinstance(item, Method):
            out.append(item)
        elif isinstance(item, str):
            if item not in RULES:
                raise UnlearningError(f"unknown method {item!r}: a rule name {RULES} (applied to the model's "
                                      f"experts) or a Method")
            if model is None:
                raise UnlearningError(f"method {item!r} needs a MONET model")
            units = shared.setdefault("experts", ExpertUnits(model))
            out.append(Method(f"{units.name.replace(' experts', '')} {item}", units, item))
        else:
            raise UnlearningError(f"a method is a rule name or a Method, got {type(item).__name__}")
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        raise UnlearningError(f"method names repeat: {names}")
    for m in out:
        if m.rule == "random" and m.match is None:
            m.match = next((x.name for x in out if x.units is m.units and x.rule != "random"), None)
        if m.match is not None and m.match not in names:
            raise UnlearningError(f"method {m.name!r} matches unknown method {m.match!r}")
        if m.match is not None and names.index(m.match) > names.index(m.name):
            raise UnlearningError(f"method {m.name!r} matches {m.match!r}, which must come earlier in the list")
        if m.rule == "same":
            other = out[names.index(m.match)]
            if other.units.n_units != m.units.n_units:
                raise UnlearningError(f"method {m.name!r} reuses the units of {m.match!r}, but their unit sets differ "
                                      f"in size ({m.units.n_units} vs {other.units.n_units})")
    return out


# ============================================================================================
# the result
# ============================================================================================


@dataclass
class UnlearningResult:
    """Everything a sweep measured (pandas DataFrames) plus tables, figures and an HTML section.

    clean: clean-model metrics per (model, label) on the evaluation split.
    curves: one row per (method, forget, point) on the selection split: n_removed, fraction,
        forget_* and retain_* metrics (retain = mean over the other labels) and their deltas.
    points: one row per (method, forget, label) on the evaluation split at the operating point:
        clean and edited metrics and deltas (d_*).
    summary: one row per (method, forget): n_removed, d_target_* / d_others_* / selectivity_*,
        the operating point's selection-split retain drop, within_budget, and target_share_removed
        (share of the forget label's statistic, e.g. routing mass, carried by the removed units).
    selections: {(method, forget): unit ids removed at the operating point}.
    """

    clean: pd.DataFrame
    curves: pd.DataFrame
    points: pd.DataFrame
    summary: pd.DataFrame
    selections: dict[tuple[str, str], torch.Tensor]
    methods: list[dict[str, Any]]
    labels: list[str]
    label_kinds: dict[str, str]
    settings: dict[str, Any]
    timing: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    # ---------------------------------------------------------------- tables
    def table(self, method: str, metric: str = "top1") -> pd.DataFrame:
        """Paper layout for one method: rows = forgotten label, columns = every label, cells = the
        change of ``metric`` (points for accuracies, bits per byte for bpb) at the operating point."""
        sub = self.points[self.points["method"] == method]
        if sub.empty:
            raise KeyError(f"no results for method {method!r}; methods: {self.method_names}")
        table = sub.pivot(index="forget", columns="label", values=f"d_{metric}")
        rows = [lab for lab in self.labels if lab in table.index]
        cols = [lab for lab in self.labels if lab in table.columns]
        return table.loc[rows, cols]

    @property
    def method_names(self) -> list[str]:
        return [m["name"] for m in self.methods]

    def overview(self) -> pd.DataFrame:
        """Per method, means over the forgotten labels of the summary columns."""
        cols = ["n_removed", "frac_removed", "d_target_top1", "d_others_top1", "selectivity_top1",
                "d_target_bpb", "d_others_bpb", "selectivity_bpb", "d_target_top10", "d_others_top10",
                "d_target_top1_skip", "d_others_top1_skip", "target_share_removed", "within_budget"]
        frame = self.summary.groupby("method", sort=False)[[c for c in cols if c in self.summary]].mean()
        frame.insert(0, "labels", self.summary.groupby("method", sort=False).size())
        return frame

    def by_kind(self) -> pd.DataFrame:
        """Per method and kind of the forgotten label (code / natural): mean summary columns."""
        cols = ["n_removed", "d_target_top1", "d_others_top1", "selectivity_top1", "d_target_bpb", "d_others_bpb",
                "selectivity_bpb"]
        return self.summary.groupby(["method", "kind"], sort=False)[cols].mean()

    def compare(self, reference: str, metric: str = "selectivity_top1") -> pd.DataFrame:
        """Per forgotten label, ``metric`` of every method and whether ``reference`` beats it
        (lower is better for accuracy selectivity, higher for bpb)."""
        wide = self.summary.pivot(index="forget", columns="method", values=metric)
        better = (lambda a, b: a < b) if "bpb" not in metric else (lambda a, b: a > b)
        out = wide.copy()
        for other in wide.columns:
            if other != reference:
                out[f"{reference} beats {other}"] = better(wide[reference], wide[other])
        return out

    def markdown(self, metric: str = "top1", digits: int = 2, counts: bool = True) -> str:
        """A Markdown table: rows = forgotten label, one column per method with
        "dTarget / dOthers" of ``metric`` at the operating point (and the number of units removed),
        then the mean row."""
        names = [n for n in self.method_names if (self.summary["method"] == n).any()]
        head = "| forget | " + " | ".join(names) + " |"
        lines = [head, "|" + "---|" * (len(names) + 1)]
        forgets = [lab for lab in self.labels if lab in set(self.summary["forget"])]
        index = self.summary.set_index(["method", "forget"])

        def cell(row: Any) -> str:
            text = f"{row[f'd_target_{metric}']:+.{digits}f} / {row[f'd_others_{metric}']:+.{digits}f}"
            return text + (f" ({int(row['n_removed'])})" if counts else "")

        for lab in forgets:
            cells = [cell(index.loc[(n, lab)]) if (n, lab) in index.index else "" for n in names]
            lines.append(f"| {lab} | " + " | ".join(cells) + " |")
        means = self.summary.groupby("method")[[f"d_target_{metric}", f"d_others_{metric}", "n_removed"]].mean()
        lines.append("| **mean** | " + " | ".join(
            f"**{means.loc[n, f'd_target_{metric}']:+.{digits}f} / {means.loc[n, f'd_others_{metric}']:+.{digits}f}**"
            + (f" ({means.loc[n, 'n_removed']:.0f})" if counts else "") for n in names) + " |")
        return "\n".join(lines)

    # ---------------------------------------------------------------- figures
    def figure_curves(self, forget: str | None = None, metric: str = "top1"):
        """Forget vs retain change along each method's curve (selection split). forget=None: the
        mean over forgotten labels at each curve point index."""
        import plotly.graph_objects as go

        fig = go.Figure()
        if self.curves.empty:
            fig.update_layout(title="No curves (only fixed-size selections were run)", template="plotly_white")
            return fig
        data = self.curves if forget is None else self.curves[self.curves["forget"] == forget]
        for name in self.method_names:
            sub = data[data["method"] == name]
            if sub.empty:
                continue
            if forget is None:
                sub = sub.groupby("point", as_index=False)[[f"d_forget_{metric}", f"d_retain_{metric}",
                                                              "n_removed"]].mean()
            sub = sub.sort_values("n_removed")
            fig.add_trace(go.Scatter(x=sub[f"d_retain_{metric}"], y=sub[f"d_forget_{metric}"], mode="lines+markers",
                                     name=name, text=[f"{n:.0f} units" for n in sub["n_removed"]],
                                     hovertemplate="%{text}<br>retain %{x:.2f}<br>forget %{y:.2f}<extra>" + name
                                     + "</extra>"))
        unit = "points" if metric != "bpb" else "bits/byte"
        fig.update_layout(title=f"Forget vs retain change of {metric} along each curve"
                          + (f" (forget {forget})" if forget else " (mean over forgotten labels)"),
                          xaxis_title=f"retain change ({unit})", yaxis_title=f"forget change ({unit})",
                          template="plotly_white", height=420)
        if metric != "bpb":
            fig.add_vline(x=-self.settings.get("retain_budget", 1.0), line_dash="dot", line_color="gray")
        return fig

    def figure_table(self, method: str, metric: str = "top1"):
        """Heatmap of :meth:`table` (rows forgotten, columns measured)."""
        import plotly.graph_objects as go

        table = self.table(method, metric)
        values = table.to_numpy(dtype=float)
        bound = float(np.nanmax(np.abs(values))) if values.size and np.isfinite(values).any() else 1.0
        scale = "RdBu" if metric != "bpb" else "RdBu_r"
        fig = go.Figure(go.Heatmap(z=values, x=list(table.columns), y=list(table.index), colorscale=scale,
                                   zmin=-bound, zmax=bound, colorbar=dict(title=f"d{metric}")))
        fig.update_layout(title=f"{method}: change of {metric} (rows: forgotten label)", template="plotly_white",
                          height=max(320, 22 * len(table) + 160), xaxis_tickangle=-45)
        fig.update_yaxes(autorange="reversed")
        return fig

    def figure_selectivity(self, metric: str = "top1"):
        """dTarget and dOthers per forgotten label, grouped by method."""
        import plotly.graph_objects as go

        fig = go.Figure()
        for name in self.method_names:
            sub = self.summary[self.summary["method"] == name]
            fig.add_trace(go.Bar(x=sub["forget"], y=sub[f"d_target_{metric}"], name=f"{name}: dTarget"))
            fig.add_trace(go.Scatter(x=sub["forget"], y=sub[f"d_others_{metric}"], mode="markers",
                                     name=f"{name}: dOthers", marker_symbol="x"))
        fig.update_layout(barmode="group", template="plotly_white", height=440, xaxis_tickangle=-45,
                          title=f"Change of {metric} on the forgotten label (bars) and the others (x)")
        return fig

    def figures(self) -> dict[str, Any]:
        out = {"curves_top1": self.figure_curves(), "selectivity_top1": self.figure_selectivity("top1"),
               "selectivity_bpb": self.figure_selectivity("bpb")}
        for name in self.method_names:
            if (self.points["method"] == name).any():
                out[f"table_top1:{name}"] = self.figure_table(name, "top1")
        return out

    # ---------------------------------------------------------------- HTML + files
    def html_section(self, title: str = "Unlearning: deleting experts against fair baselines",
                     include_plotlyjs: bool | str = "inline", tables_for: Sequence[str] | None = None) -> str:
        """A self-contained HTML fragment (one <section>): method notes, overview and per-label
        summary tables, paper-style tables, figures. include_plotlyjs: "inline" (plotly.js once,
        inlined: works offline), "cdn", or False when the embedding page already loads plotly."""
        return render_html_section(self, title=title, include_plotlyjs=include_plotlyjs, tables_for=tables_for)

    def save(self, folder: str | Path, html: bool = True) -> Path:
        """Write CSVs (clean, curves, points, summary, overview), selections.json, settings.json and
        unlearning.html into ``folder``."""
        import json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.clean.to_csv(folder / "clean.csv")
        self.curves.to_csv(folder / "curves.csv", index=False)
        self.points.to_csv(folder / "points.csv", index=False)
        self.summary.to_csv(folder / "summary.csv", index=False)
        self.overview().to_csv(folder / "overview.csv")
        sel = {f"{m}|{f}": ids.tolist() for (m, f), ids in self.selections.items()}
        (folder / "selections.json").write_text(json.dumps(sel))
        meta = {"settings": self.settings, "timing": self.timing, "methods": self.methods, "labels": self.labels,
                "label_kinds": self.label_kinds, "notes": self.notes}
        (folder / "settings.json").write_text(json.dumps(meta, indent=1, default=str))
        if html:
            body = self.html_section()
            (folder / "unlearning.html").write_text(
                "<!doctype html><html><head><meta charset='utf-8'><title>unlearning</title></head><body>"
                + body + "</body></html>")
        return folder


# ============================================================================================
# the sweep
# ============================================================================================


@dataclass
class _LabelData:
    label: str
    kind: str
    common: torch.Tensor
    stat_windows: torch.Tensor
    iter_windows: torch.Tensor
    sets: dict[str, EvalSet]  # roles: curve_forget, curve_retain, test_forget, test_retain


class _Sweep:
    """Shared state of one run: label data, cached clean metrics and statistics, timing."""

    ROLES = ("curve_forget", "curve_retain", "test_forget", "test_retain")

    def __init__(self, corpus: Any, labels: list[str], settings: dict[str, Any], byte_lengths: torch.Tensor | None,
                 progress: bool):
        self.corpus, self.labels, self.s = corpus, labels, settings
        self.byte_lengths = byte_lengths
        self.progress = progress
        self.data: dict[str, _LabelData] = {}
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
        s = self.s
        seq = s["seq_len"]
        sizes = {"curve_forget": (s["select_split"], s["curve_forget_tokens"]),
                 "curve_retain": (s["select_split"], s["curve_retain_tokens"]),
                 "test_forget": (s["eval_split"], s["eval_forget_tokens"]),
                 "test_retain": (s["eval_split"], s["eval_tokens"])}
        for lab in self.labels:
            common = common_tokens(self.corpus, lab, s["skip_common"], s["stat_split"])
            stat = token_windows(self.corpus, lab, s["stat_split"], s["stat_tokens"], seq)
            n_iter = max(1, math.ceil(s["iter_stat_tokens"] / seq))
            sets = {}
            for role, (split, n_tokens) in sizes.items():
                bpt = bytes_per_predicted_token(self.corpus, lab, split) if self.byte_lengths is None else 1.0
                sets[role] = EvalSet(lab, token_windows(self.corpus, lab, split, n_tokens, seq), common, bpt)
            self.data[lab] = _LabelData(lab, self.corpus.label_kind(lab), common, stat, stat[:n_iter], sets)

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, model: Any, sets: list[EvalSet]) -> np.ndarray:
        """[n_sets, len(METRICS)] metrics (columns in METRICS order)."""
        t0 = time.perf_counter()
        bos = getattr(model.cfg, "bos_token_id", None)
        out = evaluate_arrays(model, sets, batch_size=self.s["batch_size"], bos_token_id=bos,
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
                frame.insert(0, "model", _model_name(model))
                frame.insert(1, "label", self.labels)
                frame.insert(2, "kind", [self.data[lab].kind for lab in self.labels])
                frame.insert(3, "tokens", [int(self.data[lab].sets[role].windows.shape[0] * self.s["seq_len"])
                                           for lab in self.labels])
                self.clean_rows.append(frame)
        return self._clean[key]

    def measure(self, units: UnitSet, forget: str, removed: torch.Tensor, phase: str) -> tuple[np.ndarray, np.ndarray]:
        """(edited, clean) metrics [labels, METRICS] with ``removed`` units removed (``phase`` sets)."""
        model = units.model
        with units.removal(removed):
            edited = self.evaluate(model, self.sets(forget, phase))
        f = self.labels.index(forget)
        clean = self.clean(model, f"{phase}_retain").copy()
        clean[f] = self.clean(model, f"{phase}_forget")[f]
        return edited, clean

    def curve_point(self, units: UnitSet, forget: str, removed: torch.Tensor) -> dict[str, float]:
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
    def statistics(self, units: UnitSet) -> dict[str, torch.Tensor]:
        """{"mean": [L, N], "freq": [L, N]} over every label's statistics windows (cached per unit set)."""
        key = id(units)
        if key not in self._stats:
            t0 = time.perf_counter()
            per = [units.statistics(self.data[lab].stat_windows, self.s["batch_size"]) for lab in self.labels]
            self._stats[key] = {k: torch.stack([p[k] for p in per]) for k in STATISTICS}
            self.timing["statistics_s"] += time.perf_counter() - t0
            self.log(f"statistics of {units.name}: {units.n_units} units, {time.perf_counter() - t0:.1f} s")
        return self._stats[key]

    def iter_statistics(self, units: UnitSet, removed: torch.Tensor, stat_name: str) -> torch.Tensor:
        """[L, N] statistics on the (smaller) iterative windows with ``removed`` already removed."""
        t0 = time.perf_counter()
        with units.removal(removed):
            per = [units.statistics(self.data[lab].iter_windows, self.s["batch_size"]) for lab in self.labels]
        self.timing["statistics_s"] += time.perf_counter() - t0
        return torch.stack([p[stat_name] for p in per])

    def cached_statistics(self, units: UnitSet) -> dict[str, torch.Tensor] | None:
        return self._stats.get(id(units))

    def set_statistics(self, units: UnitSet, stats: dict[str, torch.Tensor]) -> None:
        self._stats[id(units)] = stats


def _budget_point(curve: list[dict[str, Any]], budget: float) -> int:
    """Index of the point with the largest forget top-1 drop among those whose retain top-1 drop
    is <= budget (the first point if none is)."""
    ok = [k for k, row in enumerate(curve) if row["d_retain_top1"] >= -budget]
    if not ok:
        return 0
    return min(ok, key=lambda k: (curve[k]["d_forget_top1"], curve[k]["n_removed"]))


def _refine_target(curve: list[dict[str, Any]], budget: float) -> int | None:
    """A count between the operating point and the next larger count over the budget (geometric
    mean), or None when there is nothing to refine."""
    op = curve[_budget_point(curve, budget)]
    lo = op["n_removed"]
    if op["d_retain_top1"] < -budget:  # even the smallest point is over budget: look below it
        mid = int(round(lo / 2))
        return mid if 0 < mid < lo and all(r["n_removed"] != mid for r in curve) else None
    above = [r["n_removed"] for r in curve if r["n_removed"] > lo and r["d_retain_top1"] < -budget]
    if not above:
        return None
    mid = int(round(math.sqrt(lo * min(above))))
    return mid if lo < mid < min(above) and all(r["n_removed"] != mid for r in curve) else None


def _default_byte_lengths(corpus: Any, models: Sequence[Any]) -> torch.Tensor | None:
    """Per-token UTF-8 byte lengths from the corpus tokenizer (or a model's), or None."""
    try:
        from monet_interp.training.metrics import token_byte_lengths
    except ImportError:  # pragma: no cover - part of the package
        return None
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


def run_unlearning(
    model: Any,
    corpus: Any,
    forget: str | Sequence[str] | None = None,
    methods: Sequence[str | Method] = ("2x", "ratio", "random"),
    *,
    labels: str | Sequence[str] | None = None,
    statistic: str = "mean",
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    twox_prefixes: Sequence[float] = (),
    ratio_eps: float = 0.01,
    iter_step: float = 0.02,
    iter_steps: int = 4,
    iter_stat_tokens: int = 512,
    retain_budget: float = 1.0,
    stop_after_budget: float | None = 3.0,
    refine_steps: int = 1,
    seq_len: int = 64,
    stat_tokens: int = 2048,
    eval_forget_tokens: int = 512,
    eval_tokens: int = 64,
    curve_forget_tokens: int = 256,
    curve_retain_tokens: int = 64,
    skip_common: int = 50,
    batch_size: int = 16,
    stat_split: str = "train",
    select_split: str = "val",
    eval_split: str = "test",
    byte_lengths: torch.Tensor | str | None = "auto",
    seed: int = 0,
    routing_stats: Any = None,
    progress: bool = False,
) -> UnlearningResult:
    """Forget each label of ``forget`` with each method; measure every label (see the module docstring).

    model: the MONET model the rule-name methods ("2x", "ratio", "ratio-iter", "random") act on
        (may be None when every method is a Method object). corpus: a Corpus (or InMemoryCorpus).
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
        tokenizer via monet_interp.training.metrics.token_byte_lengths; None: the corpus
        manifest's bytes per predicted token).
    routing_stats: optional monet_interp.stats RoutingStats of ``model`` (group scope, all heads):
        used for the rule-name methods' statistics instead of a fresh pass.
    """
    t_start = time.perf_counter()
    cpu_start = time.process_time()
    if statistic not in STATISTICS:
        raise UnlearningError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    if not methods:
        raise UnlearningError("no methods given")
    all_labels = resolve_labels(corpus, labels)
    forget_labels = resolve_labels(corpus, forget) if forget is not None else list(all_labels)
    missing = [lab for lab in forget_labels if lab not in all_labels]
    if missing:
        raise UnlearningError(f"forget labels {missing} are not among the measured labels")
    if len(all_labels) < 2:
        raise UnlearningError("unlearning needs at least two labels (a forget set and a retain set)")
    fractions = tuple(sorted(float(f) for f in fractions))
    if any(not 0 < f <= 1 for f in fractions):
        raise UnlearningError(f"fractions must lie in (0, 1], got {fractions}")
    method_list = _resolve_methods(model, methods)
    models = list({id(m.units.model): m.units.model for m in method_list}.values())
    max_ctx = min(int(getattr(m.cfg, "n_ctx", seq_len)) for m in models)
    if seq_len > max_ctx:
        raise UnlearningError(f"seq_len={seq_len} exceeds a model's context ({max_ctx})")
    if isinstance(byte_lengths, str):
        if byte_lengths != "auto":
            raise UnlearningError(f"byte_lengths must be 'auto', None or a tensor, got {byte_lengths!r}")
        byte_lengths = _default_byte_lengths(corpus, models)
    settings = dict(statistic=statistic, fractions=fractions, twox_prefixes=tuple(twox_prefixes), ratio_eps=ratio_eps,
                    iter_step=iter_step, iter_steps=iter_steps, iter_stat_tokens=iter_stat_tokens,
                    retain_budget=retain_budget, stop_after_budget=stop_after_budget, refine_steps=refine_steps,
                    seq_len=seq_len,
                    stat_tokens=stat_tokens, eval_forget_tokens=eval_forget_tokens, eval_tokens=eval_tokens,
                    curve_forget_tokens=curve_forget_tokens, curve_retain_tokens=curve_retain_tokens,
                    skip_common=skip_common, batch_size=batch_size, stat_split=stat_split, select_split=select_split,
                    eval_split=eval_split, seed=seed,
                    bits_per_byte="exact token byte lengths" if byte_lengths is not None else "manifest bytes/token")
    sweep = _Sweep(corpus, all_labels, settings, byte_lengths, progress)
    sweep.prepare()
    label_index = {lab: k for k, lab in enumerate(all_labels)}
    if routing_stats is not None and model is not None:
        _use_routing_stats(sweep, method_list, model, routing_stats, all_labels)

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
            stat_name = method.statistic or statistic
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
                return stop_after_budget is not None and curve[-1]["d_retain_top1"] < -stop_after_budget * retain_budget

            def refine(order: torch.Tensor) -> None:
                for _ in range(refine_steps):
                    count = _refine_target(curve, retain_budget)
                    if count is None:
                        return
                    add_point(order[:count], len(curve), "refinement")

            rng_seed = seed * 1_000_003 + fi * 1009 + mi
            op, chosen = None, torch.zeros(0, dtype=torch.long)
            if method.rule == "same":
                chosen = selections[(method.match, target)]
            elif method.rule == "random" and method.match is not None:
                chosen = select_random(n, op_count[(method.match, target)], seed=rng_seed)
            elif method.rule == "random":
                order = select_random(n, n, seed=rng_seed)
                for k, frac in enumerate(method.fractions or fractions):
                    add_point(order[:max(1, round(frac * n))], k, f"fraction {frac:g}")
                    if over_budget():
                        break
                refine(order)
                op = _budget_point(curve, retain_budget)
            elif method.rule == "2x":
                chosen = select_2x(sweep.statistics(units)[stat_name], f_idx, method.factor, method.min_value)
                if twox_prefixes and len(chosen):
                    sizes = sorted({max(1, round(p * len(chosen))) for p in twox_prefixes} - {len(chosen)})
                    for k, size in enumerate(sizes):
                        add_point(chosen[:size], k, "2x prefix")
                    add_point(chosen, len(sizes), "2x rule")
                    op = len(curve) - 1
            elif method.rule == "ratio":
                i_f, i_r = _forget_retain(sweep.statistics(units)[stat_name], f_idx)
                order = rank_units(ratio_scores(i_f, i_r, ratio_eps), tiebreak=i_f)
                for k, frac in enumerate(method.fractions or fractions):
                    add_point(order[:max(1, round(frac * n))], k, f"fraction {frac:g}")
                    if over_budget():
                        break
                refine(order)
                op = _budget_point(curve, retain_budget)
            else:  # ratio-iter
                removed = torch.zeros(0, dtype=torch.long)
                per_step = max(1, round(iter_step * n))
                for step in range(iter_steps):
                    stats = (sweep.statistics(units)[stat_name] if step == 0
                             else sweep.iter_statistics(units, removed, stat_name))
                    i_f, i_r = _forget_retain(stats, f_idx)
                    removed = torch.cat([removed, select_ratio(i_f, i_r, per_step, ratio_eps, exclude=removed)])
                    add_point(removed, step, f"step {step + 1}")
                    if over_budget():
                        break
                op = _budget_point(curve, retain_budget)
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
            summary = _summarise(method, target, sweep, rows, curve, op, n, retain_budget)
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
        methods=[dict(name=m.name, rule=m.rule, statistic=m.statistic or statistic, match=m.match,
                      units=m.units.info(), model=_model_name(m.units.model)) for m in method_list],
        labels=all_labels, label_kinds={lab: sweep.data[lab].kind for lab in all_labels}, settings=settings,
        timing=timing, notes=sweep.notes)


def _forget_retain(stats: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """I(forget) [N] and I(retain) [N] = unweighted mean over every other label."""
    others = torch.cat([stats[:target], stats[target + 1:]])
    return stats[target], others.mean(0)


def _summarise(method: Method, target: str, sweep: _Sweep, rows: list[dict[str, Any]], curve: list[dict[str, Any]],
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


def _use_routing_stats(sweep: _Sweep, methods: list[Method], model: Any, rs: Any, labels: list[str]) -> None:
    """Thin adapter: statistics of a RoutingStats (monet_interp.stats) for group-scope, all-heads
    expert units of ``model``."""
    for m in methods:
        units = m.units
        if not (isinstance(units, ExpertUnits) and units.model is model and units.scope == "group"
                and units.heads == "all"):
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


# ============================================================================================
# HTML
# ============================================================================================


def _fmt_frame(frame: pd.DataFrame, digits: int = 2) -> str:
    return frame.to_html(float_format=lambda v: f"{v:.{digits}f}", border=0, classes="unl-table", na_rep="")


def _table_with_colour(table: pd.DataFrame, metric: str) -> str:
    """A paper-style table as HTML with cells tinted by sign (red = worse)."""
    values = table.to_numpy(dtype=float)
    bound = float(np.nanmax(np.abs(values))) if values.size and np.isfinite(values).any() else 1.0
    bound = bound or 1.0
    worse_sign = -1.0 if metric != "bpb" else 1.0
    head = "".join(f"<th>{html_lib.escape(str(c))}</th>" for c in table.columns)
    body = []
    for idx, row in table.iterrows():
        cells = []
        for col, v in row.items():
            if not np.isfinite(v):
                cells.append("<td></td>")
                continue
            alpha = min(1.0, abs(v) / bound) * 0.75
            colour = f"rgba(198,40,40,{alpha:.2f})" if v * worse_sign > 0 else f"rgba(25,118,210,{alpha:.2f})"
            style = f"background:{colour};" + ("font-weight:700;outline:1px solid #333;" if col == idx else "")
            cells.append(f"<td style='{style}'>{v:+.2f}</td>")
        body.append(f"<tr><th>{html_lib.escape(str(idx))}</th>{''.join(cells)}</tr>")
    return (f"<div class='unl-scroll'><table class='unl-table'><thead><tr><th>forget \\ measured</th>{head}</tr>"
            f"</thead><tbody>{''.join(body)}</tbody></table></div>")


HTML_CSS = """
.unl section, section.unl { font: 14px/1.45 system-ui, sans-serif; }
.unl-table { border-collapse: collapse; font-variant-numeric: tabular-nums; font-size: 12px; }
.unl-table th, .unl-table td { padding: 3px 6px; border-bottom: 1px solid #e3e6ea; text-align: right; white-space: nowrap; }
.unl-table th { background: #fafbfc; color: #555; }
.unl-scroll { overflow-x: auto; max-width: 100%; }
.unl-note { color: #555; font-size: 13px; }
"""


def render_html_section(result: UnlearningResult, title: str = "Unlearning", include_plotlyjs: bool | str = "inline",
                        tables_for: Sequence[str] | None = None) -> str:
    """See :meth:`UnlearningResult.html_section`."""
    s = result.settings
    parts = [f"<section class='unl'><style>{HTML_CSS}</style><h2>{html_lib.escape(title)}</h2>"]
    parts.append(
        "<p class='unl-note'>Units are removed and next-token metrics measured on held-out text of every label, "
        "against the clean model. MONET experts are pruned exactly through the edit API (whole routing group, "
        "all heads unless stated); dense MLP neurons are zeroed; SAE features on MLP outputs are clamped negative "
        "with the SAE error term kept (x' = x + (f' - f) W_dec), so the reconstruction error costs nothing. "
        f"Selection statistics on the {s['stat_split']} split ({s['stat_tokens']} tokens per label), curves and "
        f"operating points on {s['select_split']}, reported numbers on {s['eval_split']} ({s['eval_forget_tokens']} tokens "
        f"of the forgotten label, {s['eval_tokens']} of every other label). Operating point of a curve: the largest forget top-1 drop with retain top-1 drop <= "
        f"{s['retain_budget']} point. Accuracy changes in points (negative = drop); bits-per-byte changes positive "
        "= worse; selectivity = dTarget - dOthers.</p>")
    parts.append("<h3>Overview (mean over forgotten labels)</h3>" + _fmt_frame(result.overview()))
    cols = ["method", "forget", "n_removed", "d_target_top1", "d_others_top1", "selectivity_top1", "d_target_bpb",
            "d_others_bpb", "selectivity_bpb", "within_budget"]
    parts.append("<h3>Per forgotten label</h3><div class='unl-scroll'>"
                 + _fmt_frame(result.summary[[c for c in cols if c in result.summary]].set_index(["method", "forget"]),
                              3) + "</div>")
    names = list(tables_for) if tables_for is not None else result.method_names
    for name in names:
        if (result.points["method"] == name).any():
            parts.append(f"<h3>{html_lib.escape(name)}: change of top-1 accuracy (points)</h3>"
                         + _table_with_colour(result.table(name, "top1"), "top1"))
    first = [include_plotlyjs]
    try:
        figs = [result.figure_curves(), result.figure_selectivity("top1"), result.figure_selectivity("bpb")]
        for fig in figs:
            parts.append(fig.to_html(full_html=False, include_plotlyjs=first[0], default_width="100%"))
            first[0] = False
    except ImportError:  # pragma: no cover - plotly is a dependency
        parts.append("<p>(plotly not installed: no figures)</p>")
    t = result.timing
    parts.append(f"<p class='unl-note'>Wall time {t.get('total_s', 0):.1f} s (statistics {t.get('statistics_s', 0):.1f} s, "
                 f"evaluation {t.get('evaluation_s', 0):.1f} s).</p>")
    for note in result.notes:
        parts.append(f"<p class='unl-note'>{html_lib.escape(note)}</p>")
    parts.append("</section>")
    return "\n".join(parts)


__all__ = [
    "DEFAULT_FRACTIONS", "EvalSet", "ExpertUnits", "InMemoryCorpus", "METRICS", "Method", "RULES", "STATISTICS",
    "UnitSet", "UnlearningError", "UnlearningResult", "bytes_per_predicted_token", "common_tokens",
    "default_methods", "evaluate_sets", "expert_methods", "rank_units", "ratio_scores", "render_html_section",
    "resolve_labels", "run_unlearning", "select_2x", "select_random", "select_ratio", "skew_2x", "token_windows",
]
