"""Fair baselines for unlearning: dense MLP neurons, and SAE features on MLP outputs.

    from monet_interp.analyses.baselines import NeuronUnits, SAEUnits, train_saes
    neurons = NeuronUnits(dense)                       # every MLP neuron, blocks.{l}.mlp.hook_post
    bank = train_saes(dense, corpus, steps=300)        # one TopK SAE per layer (SAELens), on hook_mlp_out
    features = SAEUnits(bank)                          # error term kept, negative clamping
    spliced = SAEUnits(bank, mode="spliced")           # the reconstruction spliced in (for comparison)

Both are :class:`monet_interp.analyses.unlearning.UnitSet` s, so every selection rule of the
unlearning analysis (2x, selective-pruning ratio, iterative, random) applies to them unchanged.

Neurons: statistics = mean activation (relu2 >= 0, so also the mean absolute activation) and
firing frequency (activation > 0) at ``blocks.{l}.mlp.hook_post``; removal = the neuron's
activation set to 0 (selective pruning of feed-forward neurons, Pochinkov & Schoots 2024).

SAE features, following the fair-SAE rules (evals.md):

- keep the error term: at the hook, x' = x + sum_k (f'_k - f_k) W_dec[k], i.e. Dec(f') + (x - Dec(f)),
  computed as the change alone so that an empty edit returns x bit for bit;
- remove a feature by negative clamping: where the feature is active (f_k > 0) it is set to
  ``clamp * mu_k``, mu_k its mean activation where active on the training activations
  (``clamp=0`` is zero-ablation, which is often ineffective; Farrell et al. 2024);
- always measure against the clean model: ``mode="spliced"`` replaces x by Dec(f') (the
  reconstruction spliced in, even with nothing removed) to show what splicing alone costs.

SAEs are trained with SAELens (``TopKTrainingSAE`` + ``SAETrainer`` fed by an iterator of
activation batches: the TransformerLens-free path) on MLP outputs (``blocks.{l}.hook_mlp_out``) of
any model with those hooks (the dense baseline, or a MONET's MoE outputs).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from monet_interp.analyses.unlearning import UnitSet, UnlearningError, _batches, _model_name, resolve_labels, token_windows

SAE_HOOK = "blocks.{layer}.hook_mlp_out"
NEURON_HOOK = "blocks.{layer}.mlp.hook_post"
SAE_MODES = ("error", "spliced")


def _n_layers(model: Any) -> int:
    return int(model.cfg.n_layers)


# ============================================================================================
# dense neurons
# ============================================================================================


class NeuronUnits(UnitSet):
    """MLP neurons of a dense model (``blocks.{l}.mlp.hook_post`` [batch, pos, d_mlp]).

    Flat unit id = slot * d_mlp + neuron, slot indexing ``layers`` (default: every layer).
    Removal zeroes the neurons' activations (so they contribute nothing to the MLP output)."""

    kind = "neuron"

    def __init__(self, model: Any, layers: Sequence[int] | None = None, hook_template: str = NEURON_HOOK,
                 fire_threshold: float = 0.0, name: str | None = None):
        self.model = model
        self.layers = list(range(_n_layers(model))) if layers is None else [int(x) for x in layers]
        self.hook_template = hook_template
        names = [hook_template.format(layer=x) for x in self.layers]
        unknown = [n for n in names if n not in model.hook_dict]
        if unknown:
            raise UnlearningError(f"{type(model).__name__} has no hook(s) {unknown} (NeuronUnits needs a dense MLP "
                                  f"model such as HookedDense)")
        self.width = int(model.cfg.d_mlp)
        self.n_units = len(self.layers) * self.width
        self.fire_threshold = float(fire_threshold)
        self.name = name or f"{_model_name(model)} neurons"

    def _split(self, units: torch.Tensor) -> dict[int, torch.Tensor]:
        units = torch.as_tensor(units, dtype=torch.long)
        slot, neuron = units // self.width, units % self.width
        return {self.layers[s]: neuron[slot == s] for s in slot.unique().tolist()}

    def hooks(self, units: torch.Tensor) -> list[tuple[str, Any]]:
        """Forward hooks zeroing ``units``."""
        out = []
        for layer, idx in self._split(units).items():
            def zero(act: torch.Tensor, hook: Any, idx: torch.Tensor = idx) -> torch.Tensor:
                return act.index_fill(-1, idx.to(act.device), 0.0)
            out.append((self.hook_template.format(layer=layer), zero))
        return out

    def removal(self, units: torch.Tensor) -> contextlib.AbstractContextManager:
        units = torch.as_tensor(units, dtype=torch.long)
        if units.numel() == 0:
            return contextlib.nullcontext()
        return self.model.hooks(fwd_hooks=self.hooks(units))

    def describe(self, units: torch.Tensor) -> pd.DataFrame:
        units = torch.as_tensor(units, dtype=torch.long)
        return pd.DataFrame({"unit": units.tolist(), "layer": [self.layers[s] for s in (units // self.width).tolist()],
                             "neuron": (units % self.width).tolist()})

    def info(self) -> dict[str, Any]:
        return dict(super().info(), layers=self.layers, width=self.width)

    @torch.no_grad()
    def statistics(self, windows: torch.Tensor, batch_size: int = 16) -> dict[str, torch.Tensor]:
        total = torch.zeros(len(self.layers), self.width, dtype=torch.float64)
        fires = torch.zeros_like(total)
        count = [0]

        def grab(slot: int):
            def hook(act: torch.Tensor, hook: Any) -> None:
                flat = act.detach().reshape(-1, act.shape[-1]).double()
                total[slot] += flat.sum(0).cpu()
                fires[slot] += (flat > self.fire_threshold).sum(0).double().cpu()
            return hook

        hooks = [(self.hook_template.format(layer=x), grab(s)) for s, x in enumerate(self.layers)]
        with self.model.hooks(fwd_hooks=hooks):
            for inputs in _batches(windows, batch_size):
                count[0] += inputs.numel()
                self.model(inputs.to(self.model.device), stop_at_layer=max(self.layers) + 1)
        n = max(count[0], 1)
        return {"mean": (total / n).flatten(), "freq": (fires / n).flatten()}


# ============================================================================================
# SAEs
# ============================================================================================


@dataclass
class SAEBank:
    """One SAE per layer at ``hook_template`` of ``model``.

    saes: {layer: SAE} (SAELens SAEs, or any module with ``encode``, ``decode``, ``W_dec``
    [d_sae, d] and a linear decoder Dec(f) = f W_dec + b_dec). mean_active: {layer: [d_sae]} mean
    activation of each feature where it is active (0 for dead features). fvu: {layer: fraction of
    variance unexplained} on held-out activations. l0: {layer: mean active features per token}.
    """

    model: Any
    saes: dict[int, Any]
    mean_active: dict[int, torch.Tensor]
    hook_template: str = SAE_HOOK
    fvu: dict[int, float] = field(default_factory=dict)
    l0: dict[int, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return sorted(self.saes)

    def d_sae(self, layer: int) -> int:
        return int(self.saes[layer].W_dec.shape[0])


def _activation_batches(acts: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(acts), generator=gen)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield acts[order[start:start + batch_size]]


@torch.no_grad()
def collect_activations(model: Any, corpus: Any, layers: Sequence[int], *, hook_template: str = SAE_HOOK,
                        labels: str | Sequence[str] | None = None, split: str = "train", tokens_per_label: int = 1024,
                        seq_len: int = 64, batch_size: int = 16) -> dict[int, torch.Tensor]:
    """{layer: [tokens, d] float32} activations at ``hook_template`` over ``tokens_per_label``
    training tokens of every label (balanced across labels)."""
    labs = resolve_labels(corpus, labels)
    windows = torch.cat([token_windows(corpus, lab, split, tokens_per_label, seq_len) for lab in labs])
    store: dict[int, list[torch.Tensor]] = {x: [] for x in layers}

    def grab(layer: int):
        def hook(act: torch.Tensor, hook: Any) -> None:
            store[layer].append(act.detach().reshape(-1, act.shape[-1]).float().cpu())
        return hook

    hooks = [(hook_template.format(layer=x), grab(x)) for x in layers]
    with model.hooks(fwd_hooks=hooks):
        for inputs in _batches(windows, batch_size):
            model(inputs.to(model.device), stop_at_layer=max(layers) + 1)
    return {x: torch.cat(v) for x, v in store.items()}


def train_sae(acts: torch.Tensor, *, expansion: int = 4, k: int = 16, steps: int = 300, batch_size: int = 512,
              lr: float = 1e-3, seed: int = 0, progress: bool = False) -> Any:
    """A TopK SAE (SAELens ``TopKTrainingSAE``, trained by ``SAETrainer`` from an iterator of
    activation batches) on ``acts`` [tokens, d]. The activation scale is estimated by SAELens
    ("expected_average_only_in") and folded into the weights, so the SAE reads raw activations."""
    from sae_lens import SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig

    torch.manual_seed(seed)
    d = acts.shape[1]
    batch_size = int(min(batch_size, len(acts)))
    cfg = TopKTrainingSAEConfig(d_in=d, d_sae=expansion * d, k=min(k, expansion * d), device="cpu", dtype="float32",
                                normalize_activations="expected_average_only_in",
                                rescale_acts_by_decoder_norm=False)
    sae = TopKTrainingSAE(cfg)
    trainer_cfg = SAETrainerConfig(total_training_samples=steps * batch_size, train_batch_size_samples=batch_size,
                                   lr=lr, lr_end=lr / 10, device="cpu", n_batches_for_norm_estimate=min(10, steps),
                                   dead_feature_window=max(50, steps // 4), feature_sampling_window=max(100, steps),
                                   lr_warm_up_steps=min(20, steps // 10))
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=_activation_batches(acts, batch_size, seed))
    with _quiet_sae_lens(not progress):
        trained = trainer.fit()
    trained.eval()
    for p in trained.parameters():
        p.requires_grad_(False)
    return trained


@contextlib.contextmanager
def _quiet_sae_lens(quiet: bool) -> Iterator[None]:
    """Silence SAELens' progress bars (they create tqdm bars unconditionally)."""
    if not quiet:
        yield
        return
    import functools

    from sae_lens.training import activation_scaler, sae_trainer

    saved = {mod: mod.tqdm for mod in (activation_scaler, sae_trainer)}
    try:
        for mod, bar in saved.items():
            mod.tqdm = functools.partial(bar, disable=True)
        yield
    finally:
        for mod, bar in saved.items():
            mod.tqdm = bar


@torch.no_grad()
def sae_quality(sae: Any, acts: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, float, float]:
    """(mean activation where active [d_sae], fraction of variance unexplained, mean L0) on ``acts``."""
    d_sae = sae.W_dec.shape[0]
    total = torch.zeros(d_sae, dtype=torch.float64)
    active = torch.zeros(d_sae, dtype=torch.float64)
    err, var, l0 = 0.0, 0.0, 0.0
    mean = acts.mean(0)
    for s in range(0, len(acts), chunk):
        x = acts[s:s + chunk]
        f = sae.encode(x)
        total += f.double().sum(0)
        active += (f > 0).double().sum(0)
        err += float((sae.decode(f) - x).double().pow(2).sum())
        var += float((x - mean).double().pow(2).sum())
        l0 += float((f > 0).sum())
    mu = torch.where(active > 0, total / active.clamp_min(1), torch.zeros_like(total))
    return mu.float(), err / max(var, 1e-30), l0 / max(len(acts), 1)


def train_saes(model: Any, corpus: Any, *, layers: Sequence[int] | None = None, hook_template: str = SAE_HOOK,
               labels: str | Sequence[str] | None = None, split: str = "train", tokens_per_label: int = 1024,
               seq_len: int = 64, expansion: int = 4, k: int = 16, steps: int = 300, batch_size: int = 512,
               lr: float = 1e-3, holdout: float = 0.1, seed: int = 0, progress: bool = False) -> SAEBank:
    """Train one TopK SAE per layer on ``hook_template`` activations (default the MLP output
    ``blocks.{l}.hook_mlp_out``) of ``tokens_per_label`` training tokens of every label.
    ``holdout`` of the activations (a random share) is kept out of training to measure FVU."""
    t0 = time.perf_counter()
    layers = list(range(_n_layers(model))) if layers is None else [int(x) for x in layers]
    acts = collect_activations(model, corpus, layers, hook_template=hook_template, labels=labels, split=split,
                               tokens_per_label=tokens_per_label, seq_len=seq_len)
    saes, mean_active, fvu, l0 = {}, {}, {}, {}
    for layer in layers:
        data = acts[layer]
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed + layer))
        n_hold = int(len(data) * holdout)
        held, train = data[order[:n_hold]], data[order[n_hold:]]
        sae = train_sae(train, expansion=expansion, k=k, steps=steps, batch_size=batch_size, lr=lr,
                        seed=seed + layer, progress=progress)
        mu, _, _ = sae_quality(sae, train)
        _, layer_fvu, layer_l0 = sae_quality(sae, held if n_hold else train)
        saes[layer], mean_active[layer], fvu[layer], l0[layer] = sae, mu, layer_fvu, layer_l0
    info = dict(model=_model_name(model), hook_template=hook_template, tokens=int(len(acts[layers[0]])),
                expansion=expansion, k=k, steps=steps, batch_size=batch_size, lr=lr, seconds=time.perf_counter() - t0)
    return SAEBank(model, saes, mean_active, hook_template, fvu, l0, info)


class SAEUnits(UnitSet):
    """SAE features of an :class:`SAEBank` as removable units.

    Flat unit id = slot * d_sae + feature (slot indexing ``bank.layers``; every SAE the same width).
    mode "error" (default): x' = x + sum_k (f'_k - f_k) W_dec[k] (error term kept); "spliced":
    x' = Dec(f') (the reconstruction replaces x at every layer of the bank, even with nothing
    removed). clamp: value of a removed feature where it is active, in units of its mean active
    value mu_k (negative clamping; 0 = zero-ablation).
    """

    kind = "feature"

    def __init__(self, bank: SAEBank, mode: str = "error", clamp: float = -2.0, name: str | None = None):
        if mode not in SAE_MODES:
            raise UnlearningError(f"mode must be one of {SAE_MODES}, got {mode!r}")
        self.bank, self.model, self.mode, self.clamp = bank, bank.model, mode, float(clamp)
        self.layers = bank.layers
        widths = {bank.d_sae(x) for x in self.layers}
        if len(widths) != 1:
            raise UnlearningError(f"every SAE of the bank must have the same width, got {sorted(widths)}")
        self.width = widths.pop()
        self.n_units = len(self.layers) * self.width
        tag = "error kept" if mode == "error" else "spliced"
        self.name = name or f"SAE features of {_model_name(self.model)} ({tag})"

    def _split(self, units: torch.Tensor) -> dict[int, torch.Tensor]:
        units = torch.as_tensor(units, dtype=torch.long)
        slot, feat = units // self.width, units % self.width
        return {self.layers[s]: feat[slot == s] for s in slot.unique().tolist()}

    def intervention(self, layer: int, features: torch.Tensor):
        """The hook function editing ``features`` of ``layer`` (see the class docstring)."""
        sae = self.bank.saes[layer]
        idx = torch.as_tensor(features, dtype=torch.long)
        value = self.clamp * self.bank.mean_active[layer][idx]
        mode = self.mode

        def hook(x: torch.Tensor, hook: Any) -> torch.Tensor:
            f = sae.encode(x)
            f_sel = f[..., idx]
            new = torch.where(f_sel > 0, value.to(f.dtype).expand_as(f_sel), f_sel)
            if mode == "error":
                return x + ((new - f_sel) @ sae.W_dec[idx]).to(x.dtype)
            f = f.clone()
            f[..., idx] = new
            return sae.decode(f).to(x.dtype)

        return hook

    def hooks(self, units: torch.Tensor) -> list[tuple[str, Any]]:
        """Forward hooks for removing ``units``; in spliced mode every layer of the bank is hooked."""
        per_layer = self._split(units)
        layers = self.layers if self.mode == "spliced" else sorted(per_layer)
        empty = torch.zeros(0, dtype=torch.long)
        return [(self.bank.hook_template.format(layer=x), self.intervention(x, per_layer.get(x, empty)))
                for x in layers]

    def removal(self, units: torch.Tensor) -> contextlib.AbstractContextManager:
        units = torch.as_tensor(units, dtype=torch.long)
        if units.numel() == 0 and self.mode == "error":
            return contextlib.nullcontext()
        return self.model.hooks(fwd_hooks=self.hooks(units))

    def describe(self, units: torch.Tensor) -> pd.DataFrame:
        units = torch.as_tensor(units, dtype=torch.long)
        return pd.DataFrame({"unit": units.tolist(), "layer": [self.layers[s] for s in (units // self.width).tolist()],
                             "feature": (units % self.width).tolist()})

    def info(self) -> dict[str, Any]:
        return dict(super().info(), mode=self.mode, clamp=self.clamp, layers=self.layers, width=self.width,
                    fvu=self.bank.fvu, l0=self.bank.l0, training=self.bank.info)

    @torch.no_grad()
    def statistics(self, windows: torch.Tensor, batch_size: int = 16) -> dict[str, torch.Tensor]:
        total = torch.zeros(len(self.layers), self.width, dtype=torch.float64)
        fires = torch.zeros_like(total)
        count = [0]

        def grab(slot: int, layer: int):
            sae = self.bank.saes[layer]

            def hook(x: torch.Tensor, hook: Any) -> None:
                f = sae.encode(x.detach().reshape(-1, x.shape[-1])).double()
                total[slot] += f.sum(0).cpu()
                fires[slot] += (f > 0).sum(0).double().cpu()
            return hook

        hooks = [(self.bank.hook_template.format(layer=x), grab(s, x)) for s, x in enumerate(self.layers)]
        with self.model.hooks(fwd_hooks=hooks):
            for inputs in _batches(windows, batch_size):
                count[0] += inputs.numel()
                self.model(inputs.to(self.model.device), stop_at_layer=max(self.layers) + 1)
        n = max(count[0], 1)
        return {"mean": (total / n).flatten(), "freq": (fires / n).flatten()}


__all__ = ["NEURON_HOOK", "NeuronUnits", "SAEBank", "SAEUnits", "SAE_HOOK", "SAE_MODES", "collect_activations",
           "sae_quality", "train_sae", "train_saes"]
