"""Data for expert activation reports (one dashboard per MONET expert; rendering: html_report.py).

An expert is ``ExpertRef(group, i, j)``: bottom/left half i and top/right half j of routing group
``group``. Its routing score on token t is the paper's

    s(t) = sum_h g_row[t, h, i] * g_col[t, h, j]          (in [0, H])

read from ``blocks.{l}.moe.hook_g_row / hook_g_col`` of the group's first layer (every layer of a
group uses the same factors). It *fires* on t when s(t) > ``fire_threshold`` (0.01 by default,
the default of ``monet_interp.stats.compute_routing_stats``). Nothing here expands the E^2
experts: scores of the chosen experts are gathered columns of g, and their row/column
neighbours one [tokens, E] product each.

Pipeline (every step returns plain data; nothing here renders):

1. :func:`plan_report_windows`: documents and windows exactly as the routing statistics plan
   them (``monet_interp.stats.plan_windows``: windows of ``ctx_len`` tokens cut from each
   [bos, ..., eos] document; bos/eos run but are not counted), from a built corpus, a
   ``<label>/*.txt`` folder or a ``{label: [text]}`` mapping. Hence densities and per-label
   means here equal those of ``compute_routing_stats`` on the same corpus and settings.
2. :func:`collect_expert_stats`: one streaming pass (the model runs only up to the first layer of
   the deepest requested group) for the chosen experts: firing count, density, score sum and max,
   per-head routing mass, per-label sums, an exact fine histogram, the top-k windows (each
   window's best position, so the top contexts are k different windows), a uniform sample of
   firing tokens (bottom-k random keys; exact when fewer than ``sample_cap`` fire) for the
   interval groups, and co-activation with the 2(E-1) experts sharing row i or column j.
3. :func:`build_expert_page`: reruns the model on the windows it shows (top contexts and interval
   examples) to colour each token by s(t) with its per-head split, computes the logit effects
   and the ablation effect (exact pruning through ``model.edit_experts``), and returns one
   JSON-ready dict per expert. :func:`build_report_data` does steps 2-3 for a list of experts.
   :func:`select_top_per_label` picks experts from a ``RoutingStats`` (``routing_stats_for``).

Choices (also shown in the report):

- Logit effects: the expert's output direction is E_ij(x) averaged over the MoE inputs x at its
  top-context positions (one position per top window), for each layer l of the routing group
  with that layer's weights; HD: V_j mean(relu2(U_i x + c_i)) + b_j; VD: the two halves
  [V11_i mean(a_i) + V12_i mean(a'_j) + b1_i ; V21_j mean(a_i) + V22_j mean(a'_j) + b2_j]. The
  mean is unweighted (E_ij is the expert's output per unit routing weight). The report's main
  table uses the sum over the group's layers (what pruning the expert removes, per unit weight),
  mapped to the vocabulary by W_U directly: ln_final is not applied (its gain is not folded in).
- Ablation: ``ExpertEdit(i, j, "prune", group=g)`` (every layer of the group, all heads, exact,
  no renormalisation); Delta loss = pruned - clean next-token loss (nats) on the top-context
  windows, (a) the mean over every predicted position of those windows, (b) the mean over the
  predictions made at the top positions (token p+1 predicted at the expert's peak p). An expert
  that never fired has no top contexts: it is measured on the first ``fallback_windows`` corpus
  windows instead (and (b) is None), so its zero is a measurement, not a convention.
- Label: the MONET 2x rule on per-label mean scores (mean over all counted tokens of the label,
  zeros included), via ``monet_interp.analyses.monosemanticity.label_metrics``.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monet_interp.progress import progress_bar

DEFAULT_CTX_LEN = 128
DEFAULT_TOP_K = 20
DEFAULT_FINE_BINS = 1024
DEFAULT_HIST_BINS = 40
DEFAULT_SAMPLE_CAP = 20_000
DEFAULT_INTERVALS = 5
DEFAULT_PER_INTERVAL = 4
DEFAULT_CONTEXT_LEFT = 24
DEFAULT_CONTEXT_RIGHT = 6
DEFAULT_N_LOGITS = 10
DEFAULT_N_NEIGHBOURS = 10
DEFAULT_FALLBACK_WINDOWS = 8
DEFAULT_FIRE_THRESHOLD = 0.01  # the default of monet_interp.stats.compute_routing_stats
SPLIT_CANDIDATES = ("val", "test", "all", "train")


class ReportError(ValueError):
    """Bad input to the expert report (unknown expert, empty corpus, ...)."""


# ============================================================================ experts
_REF_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True, order=True)
class ExpertRef:
    """Expert (i, j) of routing group ``group``."""

    group: int
    i: int
    j: int

    @classmethod
    def parse(cls, text: str) -> ExpertRef:
        """``"g:i:j"`` -> ExpertRef(g, i, j)."""
        match = _REF_RE.match(text)
        if not match:
            raise ReportError(f"expert {text!r} is not of the form GROUP:I:J (e.g. 0:3:17)")
        return cls(int(match[1]), int(match[2]), int(match[3]))

    def flat(self, n_experts: int) -> int:
        """The paper's flat id e = i * E + j (per routing group)."""
        return self.i * n_experts + self.j

    @property
    def slug(self) -> str:
        return f"g{self.group}_i{self.i}_j{self.j}"

    def __str__(self) -> str:
        return f"{self.group}:{self.i}:{self.j}"


def check_experts(cfg: Any, experts: Iterable[ExpertRef]) -> list[ExpertRef]:
    """Validate against a MonetConfig; sorted, duplicates removed."""
    out = sorted(set(experts))
    for ref in out:
        if not 0 <= ref.group < cfg.num_routers:
            raise ReportError(f"expert {ref}: routing group {ref.group} out of range (the model has "
                              f"{cfg.num_routers} routing groups)")
        for name, value in (("i", ref.i), ("j", ref.j)):
            if not 0 <= value < cfg.moe_experts:
                raise ReportError(f"expert {ref}: {name}={value} out of range (E={cfg.moe_experts})")
    return out


def first_layer(cfg: Any, group: int) -> int:
    """The router layer of a routing group (its hook_g_* hold the group's factors)."""
    return cfg.layers_of_group(group)[0]


# ============================================================================ documents, windows
@dataclass
class Document:
    """One document: its full token array as the corpus stores it ([bos, ..., eos])."""

    label: str
    index: int  # position of the document in its label's split (corpus.documents(label, split))
    tokens: np.ndarray
    key: str | None = None


@dataclass
class Window:
    """``tokens = doc.tokens[start:start + len]`` (no bos is added: windows after a document's
    first one start mid-document, as in ``monet_interp.stats.plan_windows``)."""

    index: int
    doc: int  # index into the documents list (the global document id of the plan)
    label: str
    start: int  # document position of the window's first token
    tokens: list[int]

    def doc_position(self, pos: int) -> int:
        """Position in the document's token array (bos = 0) of window position ``pos``."""
        return self.start + pos


class TextCorpus:
    """A corpus stand-in (``monet_interp.stats.CorpusLike``) from token arrays per label."""

    def __init__(self, documents: Mapping[str, Sequence[np.ndarray]], kinds: Mapping[str, str] | None = None,
                 keys: Mapping[str, Sequence[str]] | None = None, name: str | None = None):
        self.labels = sorted(documents)
        self._docs = {lab: [np.asarray(d, dtype=np.int64) for d in documents[lab]] for lab in self.labels}
        self._kinds = dict(kinds or {})
        self.keys = {lab: list(keys[lab]) for lab in keys} if keys else {}
        self.splits = ("all",)
        self.name = name

    def label_kind(self, label: str) -> str:
        return self._kinds.get(label, "natural")

    def documents(self, label: str, split: str = "all") -> list[np.ndarray]:
        return self._docs[label]

    def __repr__(self) -> str:
        return f"TextCorpus({self.name or ''} labels={self.labels})"


def _special_ids(model: Any) -> list[int]:
    """Token ids run through the model but not counted (bos/eos), as in the routing statistics."""
    from monet_interp.stats.routing_stats import special_token_ids

    return special_token_ids(model)


def _pad_id(model: Any) -> int:
    tok = getattr(model, "tokenizer", None)
    pad = getattr(tok, "pad_token_id", None) if tok is not None else None
    return int(pad if pad is not None else (model.cfg.pad_token_id or 0))


def text_corpus(model: Any, texts: Mapping[str, Sequence[str]], keys: Mapping[str, Sequence[str]] | None = None,
                name: str | None = None) -> TextCorpus:
    """``{label: [text, ...]}`` tokenised with the model's tokenizer as [bos, ..., eos] documents."""
    if getattr(model, "tokenizer", None) is None:
        raise ReportError("the model has no tokenizer: build a TextCorpus from token ids instead")
    cfg = model.cfg
    head = [cfg.bos_token_id] if cfg.bos_token_id is not None else []
    tail = [cfg.eos_token_id] if cfg.eos_token_id is not None else []
    docs = {lab: [np.asarray(head + model.tokenizer.encode(t) + tail, dtype=np.int64) for t in texts[lab]]
            for lab in texts}
    return TextCorpus(docs, keys=keys, name=name)


def text_folder_corpus(model: Any, path: str | os.PathLike[str]) -> TextCorpus:
    """A plain-text corpus folder: ``path/<label>/*.txt``, one document per file (sorted by name)."""
    root = Path(path)
    labels = sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.txt")))
    files = {lab: sorted((root / lab).glob("*.txt")) for lab in labels}
    texts = {lab: [f.read_text(encoding="utf-8", errors="replace") for f in files[lab]] for lab in labels}
    return text_corpus(model, texts, keys={lab: [f.name for f in files[lab]] for lab in labels}, name=str(root))


def load_corpus(path: str | os.PathLike[str]) -> Any:
    """``Corpus.load(path)`` (monet_interp.data.corpus), with a clear error for a missing folder."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"corpus folder {root} does not exist")
    from monet_interp.data.corpus import Corpus

    return Corpus.load(root, verify=False)


def open_corpus(model: Any, corpus: Any) -> Any:
    """A CorpusLike from a Corpus object, a ``{label: [text]}`` mapping, a built corpus folder
    (manifest.json) or a plain-text folder (``<label>/*.txt``)."""
    if isinstance(corpus, Mapping):
        return text_corpus(model, corpus)
    if not isinstance(corpus, (str, os.PathLike)):
        return corpus
    root = Path(corpus)
    if not root.is_dir():
        raise FileNotFoundError(f"corpus folder {root} does not exist")
    if (root / "manifest.json").is_file():
        return load_corpus(root)
    if any(p.is_dir() and any(p.glob("*.txt")) for p in root.iterdir()):
        return text_folder_corpus(model, root)
    raise ReportError(f"{root} is neither a built corpus (no manifest.json; build one with `monet-interp corpus "
                      f"build`) nor a plain-text corpus (<label>/*.txt)")


def resolve_split(corpus: Any, split: str | None) -> str:
    """``split`` checked against the corpus; None: "val" (held-out, as the routing statistics)."""
    splits = tuple(getattr(corpus, "splits", SPLIT_CANDIDATES))
    if split is None:
        return next((c for c in SPLIT_CANDIDATES if c in splits), splits[0])
    if split not in splits:
        raise ReportError(f"unknown split {split!r}; the corpus has {', '.join(splits)}")
    return split


def check_labels(corpus: Any, labels: Sequence[str] | None) -> None:
    """ReportError naming every label of ``labels`` that the corpus does not have."""
    available = list(corpus.labels)
    unknown = [lab for lab in (labels or []) if lab not in available]
    if unknown:
        raise ReportError(f"labels {unknown} are not in the corpus; labels: {', '.join(available)}")


def plan_report_windows(model: Any, corpus: Any, *, split: str | None = None, labels: Sequence[str] | None = None,
                        ctx_len: int = DEFAULT_CTX_LEN, max_tokens_per_label: int | None = None
                        ) -> tuple[list[Document], list[Window], str]:
    """Documents and windows exactly as ``monet_interp.stats.compute_routing_stats`` plans them
    (same documents, same windows), so the report's numbers match the routing statistics.
    Returns (documents, windows, split)."""
    from monet_interp.stats.routing_stats import plan_windows

    corpus = open_corpus(model, corpus)
    split = resolve_split(corpus, split)
    check_labels(corpus, labels)
    if ctx_len > model.cfg.max_position_embeddings:
        raise ReportError(f"ctx_len={ctx_len} exceeds the model's max_position_embeddings="
                          f"{model.cfg.max_position_embeddings}")
    plan = plan_windows(corpus, list(labels) if labels else None, split, ctx_len, max_tokens_per_label)
    if not len(plan.win_doc):
        raise ReportError(f"the corpus has no tokens in split {split!r} for labels {plan.labels}")
    keys: dict[str, list[str | None]] = {}
    for lab in plan.labels:
        if isinstance(corpus, TextCorpus):
            keys[lab] = list(corpus.keys.get(lab, []))
        elif hasattr(corpus, "records"):
            with contextlib.suppress(Exception):  # keys are a nicety
                n = int(plan.doc_index[plan.doc_label == plan.labels.index(lab)].max(initial=-1)) + 1
                keys[lab] = [r.get("key") for r in corpus.records(lab, split, limit=n)]
    documents = []
    for d, arr in enumerate(plan.docs):
        lab = plan.labels[int(plan.doc_label[d])]
        k = int(plan.doc_index[d])
        names = keys.get(lab, [])
        documents.append(Document(lab, k, np.asarray(arr, dtype=np.int64), names[k] if k < len(names) else None))
    top = max(int(d.tokens.max()) for d in documents if len(d.tokens))
    if top >= model.cfg.vocab_size:
        raise ReportError(f"the corpus holds token id {top}, beyond the model's vocabulary ({model.cfg.vocab_size}): "
                          f"it was tokenised with another tokenizer")
    windows = []
    for w, (d, start, n) in enumerate(zip(plan.win_doc.tolist(), plan.win_start.tolist(), plan.win_len.tolist())):
        windows.append(Window(w, d, documents[d].label, start, [int(t) for t in documents[d].tokens[start:start + n]]))
    return documents, windows, split


def _batches(windows: Sequence[Window], batch_size: int) -> Iterator[list[Window]]:
    for k in range(0, len(windows), batch_size):
        yield list(windows[k:k + batch_size])


def _pad(model: Any, batch: Sequence[Window]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """tokens [b, p], attention mask (None when no padding), counted-token mask [b, p]
    (real tokens that are not bos/eos)."""
    width = max(len(w.tokens) for w in batch)
    tokens = torch.full((len(batch), width), _pad_id(model), dtype=torch.long)
    real = torch.zeros((len(batch), width), dtype=torch.bool)
    for row, w in enumerate(batch):
        tokens[row, :len(w.tokens)] = torch.tensor(w.tokens, dtype=torch.long)
        real[row, :len(w.tokens)] = True
    counted = real & ~torch.isin(tokens, torch.tensor(_special_ids(model), dtype=torch.long))
    mask = None if bool(real.all()) else real.to(model.device)
    return tokens.to(model.device), mask, counted


def _g_names(cfg: Any, group: int) -> tuple[str, str]:
    layer = first_layer(cfg, group)
    return f"blocks.{layer}.moe.hook_g_row", f"blocks.{layer}.moe.hook_g_col"


def _progress(iterable: Iterable, total: int, desc: str, enabled: bool) -> Iterable:
    return progress_bar(iterable, total=total, desc=desc, disable=not enabled, leave=False)


# ============================================================================ labels
def label_summary(label_sum: np.ndarray, label_tokens: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Per-label mean scores -> MONET 2x-rule label, normalised entropy, specialisation ratio
    (``monet_interp.analyses.monosemanticity.label_metrics``, so the report agrees with the
    monosemanticity tables). ``label_sum`` [L] summed scores, ``label_tokens`` [L] counts.
    ``label`` is None unless r(D1) >= 2 r(D2) with r(D1) > 0; entropy/specialisation are None
    for an expert that never fired (and entropy is 0 with a single label)."""
    from monet_interp.analyses.monosemanticity import label_metrics, profile

    tokens = np.asarray(label_tokens, dtype=np.float64)
    means = np.where(tokens > 0, np.asarray(label_sum, dtype=np.float64) / np.maximum(tokens, 1), 0.0)
    if len(labels) >= 2:
        row = label_metrics(means[:, None], list(labels)).iloc[0]
        label, top, entropy, spec = row["label"], row["top_label"], row["entropy"], row["spec_ratio"]
    else:
        active = bool(means.sum() > 0)
        label, top = None, (labels[0] if active else None)
        entropy, spec = (0.0, 1.0) if active else (None, None)
    share = np.nan_to_num(profile(means[:, None])[:, 0], nan=0.0)

    def num(x: Any) -> float | None:
        return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)

    return {"label": label if isinstance(label, str) else None, "top_label": top if isinstance(top, str) else None,
            "entropy": num(entropy), "specialisation": num(spec),
            "means": [float(x) for x in means], "shares": [float(x) for x in share]}


# ============================================================================ streaming statistics
@dataclass
class ExpertStats:
    """Corpus statistics of one expert (see :func:`collect_expert_stats`). Arrays are numpy.
    "Fires" means s(t) > ``fire_threshold`` throughout."""

    ref: ExpertRef
    labels: list[str]
    n_heads: int
    fire_threshold: float = DEFAULT_FIRE_THRESHOLD
    n_tokens: int = 0
    n_fires: int = 0
    score_sum: float = 0.0
    max_score: float = 0.0
    head_sum: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [H] sum_t g_row[t,h,i] g_col[t,h,j]
    label_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [L]
    label_sum: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [L]
    label_fires: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [L]
    fine_hist: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [n_fine] firing scores over [0, H]
    top: list[tuple[float, int, int]] = field(default_factory=list)  # (score, window, pos), best first
    sample: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [n, 3] (score, window, pos) of firing tokens
    sample_seen: int = 0  # firing tokens offered to the sample (== n_fires)
    row_fires: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [E] tokens where (i, j') fires
    row_cofires: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [E] tokens where (i, j') and (i, j) fire
    row_label_sum: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [L, E] summed scores of (i, j')
    col_fires: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [E] tokens where (i', j) fires
    col_cofires: np.ndarray = field(default_factory=lambda: np.zeros(0))
    col_label_sum: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [L, E]

    @property
    def density(self) -> float:
        return self.n_fires / self.n_tokens if self.n_tokens else 0.0


def collect_expert_stats(
    model: Any,
    windows: Sequence[Window],
    experts: Sequence[ExpertRef],
    *,
    fire_threshold: float = DEFAULT_FIRE_THRESHOLD,
    top_k: int = DEFAULT_TOP_K,
    fine_bins: int = DEFAULT_FINE_BINS,
    sample_cap: int = DEFAULT_SAMPLE_CAP,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = False,
) -> dict[ExpertRef, ExpertStats]:
    """One pass over ``windows`` for the chosen experts (see the module docstring). Counted
    tokens: every real token except bos/eos (as the routing statistics)."""
    cfg = model.cfg
    experts = check_experts(cfg, experts)
    if not experts:
        return {}
    thr = float(fire_threshold)
    labels = sorted({w.label for w in windows})
    label_index = {lab: k for k, lab in enumerate(labels)}
    H, E, L = cfg.moe_heads, cfg.moe_experts, len(labels)
    groups = sorted({r.group for r in experts})
    by_group = {g: [r for r in experts if r.group == g] for g in groups}
    stats: dict[ExpertRef, ExpertStats] = {}
    for ref in experts:
        stats[ref] = ExpertStats(
            ref, labels, H, thr, head_sum=np.zeros(H), label_tokens=np.zeros(L, dtype=np.int64), label_sum=np.zeros(L),
            label_fires=np.zeros(L, dtype=np.int64), fine_hist=np.zeros(fine_bins, dtype=np.int64),
            sample=np.zeros((0, 3)), row_fires=np.zeros(E, dtype=np.int64), row_cofires=np.zeros(E, dtype=np.int64),
            row_label_sum=np.zeros((L, E)), col_fires=np.zeros(E, dtype=np.int64), col_cofires=np.zeros(E, dtype=np.int64),
            col_label_sum=np.zeros((L, E)))
    names = {g: _g_names(cfg, g) for g in groups}
    wanted = {n for pair in names.values() for n in pair}
    stop = max(first_layer(cfg, g) for g in groups) + 1
    gen = torch.Generator().manual_seed(seed)
    sample_keys: dict[ExpertRef, np.ndarray] = {r: np.zeros(0) for r in experts}
    n_batches = math.ceil(len(windows) / batch_size)
    with torch.no_grad():
        for batch in _progress(_batches(windows, batch_size), n_batches, "expert stats", progress):
            tokens, mask, valid = _pad(model, batch)
            _, cache = model.run_with_cache(tokens, attention_mask=mask, stop_at_layer=stop,
                                            names_filter=lambda n: n in wanted, return_cache_object=False)
            width = tokens.shape[1]
            win_ids = torch.tensor([w.index for w in batch]).repeat_interleave(width).view(len(batch), width)
            pos_ids = torch.arange(width).expand(len(batch), width)
            lab_ids = torch.tensor([label_index[w.label] for w in batch]).repeat_interleave(width).view(len(batch), width)
            win_flat, pos_flat, lab_flat = win_ids[valid], pos_ids[valid], lab_ids[valid]
            onehot = torch.nn.functional.one_hot(lab_flat, L).double()  # [N, L]
            label_counts = onehot.sum(0).numpy().astype(np.int64)
            for g in groups:
                refs = by_group[g]
                g1 = cache[names[g][0]].detach().cpu()[valid].double()  # [N, H, E]
                g2 = cache[names[g][1]].detach().cpu()[valid].double()
                rows = torch.tensor([r.i for r in refs])
                cols = torch.tensor([r.j for r in refs])
                head = g1[:, :, rows] * g2[:, :, cols]  # [N, H, K]
                score = head.sum(1)  # [N, K]
                fires = score > thr
                for k0 in range(0, len(refs), 16):  # row / column neighbours, 16 experts at a time
                    ks = slice(k0, k0 + 16)
                    row_s = torch.einsum("nhk,nhe->nke", g1[:, :, rows[ks]], g2)  # s of (i_k, j') [N, K, E]
                    col_s = torch.einsum("nhe,nhk->nke", g1, g2[:, :, cols[ks]])  # s of (i', j_k)
                    f = fires[:, ks, None]
                    row_f, col_f = row_s > thr, col_s > thr
                    row_fires, col_fires = row_f.sum(0).numpy(), col_f.sum(0).numpy()
                    row_co, col_co = (row_f & f).sum(0).numpy(), (col_f & f).sum(0).numpy()
                    row_lab = torch.einsum("nl,nke->kle", onehot, row_s).numpy()
                    col_lab = torch.einsum("nl,nke->kle", onehot, col_s).numpy()
                    for kk, ref in enumerate(refs[ks]):
                        st = stats[ref]
                        st.row_fires += row_fires[kk]
                        st.col_fires += col_fires[kk]
                        st.row_cofires += row_co[kk]
                        st.col_cofires += col_co[kk]
                        st.row_label_sum += row_lab[kk]
                        st.col_label_sum += col_lab[kk]
                head_sums = head.sum(0).numpy()  # [H, K]
                label_sums = (onehot.T @ score).numpy()  # [L, K]
                label_fires = (onehot.T @ fires.double()).numpy().round().astype(np.int64)
                # each window's best counted position per expert: top contexts are distinct windows
                per_window = torch.full((len(batch), width, len(refs)), -1.0, dtype=torch.float64)
                per_window[valid] = score
                best, best_pos = per_window.max(1)  # [b, K]
                for k, ref in enumerate(refs):
                    st = stats[ref]
                    s_k = score[:, k]
                    firing = fires[:, k]
                    n_f = int(firing.sum())
                    st.n_tokens += int(s_k.numel())
                    st.n_fires += n_f
                    st.score_sum += float(s_k.sum())
                    st.head_sum += head_sums[:, k]
                    st.label_tokens += label_counts
                    st.label_sum += label_sums[:, k]
                    st.label_fires += label_fires[:, k]
                    if s_k.numel():
                        st.max_score = max(st.max_score, float(s_k.max()))  # over all counted tokens
                    if n_f == 0:
                        continue
                    vals = s_k[firing]
                    bins = (vals / H * fine_bins).long().clamp(0, fine_bins - 1)
                    st.fine_hist += np.bincount(bins.numpy(), minlength=fine_bins)
                    cand = [(float(best[r, k]), batch[r].index, int(best_pos[r, k])) for r in range(len(batch))
                            if best[r, k] > thr]
                    st.top = sorted(st.top + cand, key=lambda c: (-c[0], c[1], c[2]))[:top_k]
                    entries = np.stack([vals.numpy(), win_flat[firing].numpy(), pos_flat[firing].numpy()], 1)
                    keys = torch.rand(n_f, generator=gen, dtype=torch.float64).numpy()
                    st.sample = np.concatenate([st.sample, entries])
                    sample_keys[ref] = np.concatenate([sample_keys[ref], keys])
                    st.sample_seen += n_f
                    if len(st.sample) > 2 * sample_cap:
                        keep = np.argsort(sample_keys[ref], kind="stable")[:sample_cap]
                        st.sample, sample_keys[ref] = st.sample[keep], sample_keys[ref][keep]
    for ref, st in stats.items():
        if len(st.sample) > sample_cap:
            keep = np.argsort(sample_keys[ref], kind="stable")[:sample_cap]
            st.sample = st.sample[keep]
        order = np.lexsort((st.sample[:, 2], st.sample[:, 1])) if len(st.sample) else np.zeros(0, dtype=np.int64)
        st.sample = st.sample[order]
    return stats


def histogram(stats: ExpertStats, n_bins: int = DEFAULT_HIST_BINS) -> dict[str, Any]:
    """Display histogram of firing scores: about ``n_bins`` equal-width bins from 0 to the max,
    aligned to the fine bins (so the counts are exact re-binnings of the fine histogram)."""
    fine = stats.fine_hist
    n_fine = len(fine)
    width_fine = stats.n_heads / n_fine
    if stats.n_fires == 0:
        return {"edges": [0.0, width_fine], "counts": [0], "bin_width": width_fine}
    last = int(np.nonzero(fine)[0].max()) + 1
    per_bin = max(1, math.ceil(last / n_bins))
    n = math.ceil(last / per_bin)
    padded = np.zeros(n * per_bin, dtype=np.int64)
    padded[:last] = fine[:last]
    counts = padded.reshape(n, per_bin).sum(1)
    edges = [float(k * per_bin * width_fine) for k in range(n + 1)]
    return {"edges": edges, "counts": [int(c) for c in counts], "bin_width": float(per_bin * width_fine)}


# ============================================================================ expert pages
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
    rname, cname = _g_names(cfg, ref.group)
    acts = _act_names(cfg, ref.group) if positions else {}
    wanted = {rname, cname} | {n for names in acts.values() for n in names}
    out: dict[int, _Rerun] = {}
    with torch.no_grad():
        for batch in _batches(windows, batch_size):
            tokens, mask, _ = _pad(model, batch)
            nll, cache = model.run_with_cache(tokens, attention_mask=mask, return_type="loss", loss_per_token=True,
                                              names_filter=lambda n: n in wanted, return_cache_object=False)
            head = (cache[rname][..., ref.i].double() * cache[cname][..., ref.j].double()).cpu()  # [b, p, H]
            for row, w in enumerate(batch):
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
        for batch in _batches(windows, batch_size):
            tokens, mask, _ = _pad(model, batch)
            nll = model(tokens, attention_mask=mask, return_type="loss", loss_per_token=True)
            for row, w in enumerate(batch):
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


def index_row(page: Mapping[str, Any]) -> dict[str, Any]:
    """One row of the index table."""
    ref, summary, label = page["ref"], page["summary"], page["label"]
    return {"group": ref["group"], "i": ref["i"], "j": ref["j"], "flat": ref["flat"], "slug": ref["slug"],
            "label": label["label"], "top_label": label["top_label"], "entropy": label["entropy"],
            "density": summary["density"], "max_score": summary["max_score"],
            "delta_loss": page["ablation"]["mean_delta_loss"]}


def build_report_data(
    model: Any,
    windows: Sequence[Window],
    experts: Sequence[ExpertRef],
    *,
    documents: Sequence[Document] | None = None,
    fire_threshold: float = DEFAULT_FIRE_THRESHOLD,
    top_k: int = DEFAULT_TOP_K,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = False,
    on_page: Callable[[dict[str, Any]], None] | None = None,
    **page_kwargs: Any,
) -> list[dict[str, Any]]:
    """Statistics pass + one page dict per expert (``on_page`` is called as each page is ready)."""
    experts = check_experts(model.cfg, experts)
    stats = collect_expert_stats(model, windows, experts, fire_threshold=fire_threshold, top_k=top_k,
                                 batch_size=batch_size, seed=seed, progress=progress)
    pages = []
    for ref in _progress(experts, len(experts), "expert pages", progress):
        page = build_expert_page(model, windows, stats[ref], documents=documents, built=experts,
                                 batch_size=batch_size, seed=seed, **page_kwargs)
        pages.append(page)
        if on_page is not None:
            on_page(page)
    return pages


# ============================================================================ choosing experts
def routing_stats_for(model: Any, corpus: Any, *, split: str | None = None, labels: Sequence[str] | None = None,
                      ctx_len: int = DEFAULT_CTX_LEN, max_tokens_per_label: int | None = None,
                      fire_threshold: float = DEFAULT_FIRE_THRESHOLD, batch_size: int = 8, top_k: int = 0,
                      progress: bool = False) -> Any:
    """``monet_interp.stats.compute_routing_stats`` over the same documents and windows as
    :func:`plan_report_windows` (by default without top-k buffers: selection needs only the
    sums and counts)."""
    from monet_interp.stats import compute_routing_stats

    corpus = open_corpus(model, corpus)
    return compute_routing_stats(model, corpus, split=resolve_split(corpus, split), labels=labels,
                                 max_tokens_per_label=max_tokens_per_label, seq_len=ctx_len, batch_size=batch_size,
                                 top_k=top_k, fire_threshold=fire_threshold, progress=progress)


def select_top_per_label(routing_stats: Any, n: int, min_fires: int = 20, groups: Sequence[int] | None = None,
                         require_label: bool = True) -> dict[str, list[ExpertRef]]:
    """The ``n`` experts most specialised in each label, from a ``RoutingStats``: ranked by the
    share q_e(D) of their per-label mean score r_e(D) (ties: larger r_e(D), then smaller id),
    among experts firing on >= ``min_fires`` counted tokens and (with ``require_label``)
    passing the 2x rule for D."""
    labels = list(routing_stats.labels)
    r = routing_stats.mean_score()  # [L, G, E, E]
    fires = routing_stats.fire_count.sum(0)  # [G, E, E]
    groups = range(routing_stats.n_groups) if groups is None else groups
    candidates: dict[str, list[tuple[float, float, ExpertRef]]] = {lab: [] for lab in labels}
    for g in groups:
        rg = r[:, g]
        total = rg.sum(0)
        share = np.divide(rg, total, out=np.zeros_like(rg), where=total > 0)
        ordered = np.sort(rg, axis=0)
        best = np.argmax(rg, axis=0)
        passes = (ordered[-1] > 0) & (ordered[-1] >= 2 * ordered[-2]) if len(labels) > 1 else ordered[-1] > 0
        for k, lab in enumerate(labels):
            mask = (fires[g] >= min_fires) & (share[k] > 0)
            if require_label:
                mask &= passes & (best == k)
            ii, jj = np.nonzero(mask)
            candidates[lab] += [(float(share[k, i, j]), float(rg[k, i, j]), ExpertRef(int(g), int(i), int(j)))
                                for i, j in zip(ii.tolist(), jj.tolist())]
    out = {}
    for lab in labels:
        ranked = sorted(candidates[lab], key=lambda c: (-c[0], -c[1], c[2]))
        out[lab] = [ref for _, _, ref in ranked[:n]]
    return out
