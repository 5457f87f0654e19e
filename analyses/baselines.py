"""Fair baselines for unlearning: SAEs trained with SAELens on MLP outputs (or any hook).

    from monet_interp.analyses.baselines import train_saes
    from monet_interp.units import NeuronUnits, SAEUnits
    neurons = NeuronUnits(dense)                       # every MLP neuron, blocks.{l}.mlp.hook_post
    bank = train_saes(dense, corpus, steps=300)        # one TopK SAE per layer (SAELens), on hook_mlp_out
    features = SAEUnits(bank)                          # error term kept, negative clamping
    spliced = SAEUnits(bank, mode="spliced")           # the reconstruction spliced in (for comparison)

The unit types (dense neurons, SAE features, the SAE bank, ``splice_sae``) are core
(:mod:`monet_interp.units`: the fair-SAE rules are described there); this module trains the SAEs.

SAEs are trained by SAELens' own training runner (``LanguageModelSAETrainingRunner`` with
``override_model=`` the hooked model and ``override_dataset=`` the corpus windows as a
pre-tokenized dataset; no network, no W&B), saved by SAELens and loaded back with
``SAE.load_from_disk`` (:func:`train_sae_with_runner`), on MLP outputs (``blocks.{l}.hook_mlp_out``)
of any model with those hooks (the dense baseline, or a MONET's MoE outputs) or any other hook,
e.g. MONET's expert activations ``blocks.{l}.moe.hook_expert_acts_row`` ([batch, pos, expert,
m/2], flattened to expert * m/2 features as SAELens does). ``train_saes(trainer="iterator")``
keeps the former path (``SAETrainer`` fed by an iterator of cached activation batches).

Run a model with an SAE spliced in, or with its error term kept (``monet_interp.units.splice_sae``)::

    sae = train_sae_with_runner(model, "blocks.1.hook_resid_post", windows, steps=200)
    with splice_sae(model, sae, "blocks.1.hook_resid_post"):                  # x -> Dec(Enc(x))
        spliced_loss = model(tokens, return_type="loss")
    drop = lambda f: f.index_fill(-1, torch.tensor([7]), 0.0)
    with splice_sae(model, sae, "blocks.1.hook_resid_post", error_term=True, edit=drop):
        edited_loss = model(tokens, return_type="loss")                      # x + Dec(f') - Dec(f)
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from monet_interp.analyses.unlearning.config import resolve_labels
from monet_interp.evaluation import token_windows
from monet_interp.units import SAE_HOOK, SAEBank, flat_features, model_name


def _n_layers(model: Any) -> int:
    return int(model.cfg.n_layers)


def _batches(windows: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Batches of the inputs windows[:, :-1] of next-token windows [n, seq + 1]."""
    for start in range(0, len(windows), batch_size):
        yield windows[start:start + batch_size, :-1]


# ============================================================================================
# SAE training
# ============================================================================================


def _activation_batches(acts: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(acts), generator=gen)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield acts[order[start:start + batch_size]]


def _label_windows(corpus: Any, labels: str | Sequence[str] | None, split: str, tokens_per_label: int,
                   seq_len: int) -> torch.Tensor:
    """Next-token windows [n, seq_len + 1] of ``tokens_per_label`` tokens of every label."""
    return torch.cat([token_windows(corpus, lab, split, tokens_per_label, seq_len)
                      for lab in resolve_labels(corpus, labels)])


@torch.no_grad()
def capture_activations(model: Any, windows: torch.Tensor, layers: Sequence[int], *, hook_template: str = SAE_HOOK,
                        batch_size: int = 16) -> dict[int, torch.Tensor]:
    """{layer: [tokens, d] float32} activations at ``hook_template`` of every layer over
    ``windows`` [n, seq + 1] (inputs windows[:, :-1]), one forward pass for all layers."""
    store: dict[int, list[torch.Tensor]] = {x: [] for x in layers}

    def grab(layer: int):
        def hook(act: torch.Tensor, hook: Any) -> None:
            flat = flat_features(act.detach())
            store[layer].append(flat.reshape(-1, flat.shape[-1]).float().cpu())
        return hook

    hooks = [(hook_template.format(layer=x), grab(x)) for x in layers]
    with model.hooks(fwd_hooks=hooks):
        for inputs in _batches(windows, batch_size):
            model(inputs.to(model.device), stop_at_layer=max(layers) + 1)
    return {x: torch.cat(v) for x, v in store.items()}


def collect_activations(model: Any, corpus: Any, layers: Sequence[int], *, hook_template: str = SAE_HOOK,
                        labels: str | Sequence[str] | None = None, split: str = "train", tokens_per_label: int = 1024,
                        seq_len: int = 64, batch_size: int = 16) -> dict[int, torch.Tensor]:
    """{layer: [tokens, d] float32} activations at ``hook_template`` over ``tokens_per_label``
    training tokens of every label (balanced across labels)."""
    windows = _label_windows(corpus, labels, split, tokens_per_label, seq_len)
    return capture_activations(model, windows, layers, hook_template=hook_template, batch_size=batch_size)


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
    """SAELens' progress bars (created unconditionally) silenced, or, when shown, made log-friendly
    (monet_interp.progress.progress_bar); its logger and warnings quiet when ``quiet``."""
    import functools
    import logging
    import warnings

    from sae_lens.training import activation_scaler, activations_store, sae_trainer

    from monet_interp.progress import progress_bar

    modules = (activation_scaler, activations_store, sae_trainer)
    saved = {mod: mod.tqdm for mod in modules}
    sae_logger = logging.getLogger("sae_lens")
    level = sae_logger.level
    try:
        for mod in modules:
            mod.tqdm = functools.partial(progress_bar, disable=True) if quiet else progress_bar
        with warnings.catch_warnings():
            if quiet:
                sae_logger.setLevel(logging.ERROR)
                warnings.simplefilter("ignore")
            yield
    finally:
        sae_logger.setLevel(level)
        for mod, bar in saved.items():
            mod.tqdm = bar


def hook_width(model: Any, hook_name: str, context_size: int = 2) -> int:
    """Features per token at ``hook_name`` (trailing dims flattened, e.g. expert * m/2)."""
    if hook_name not in model.hook_dict:
        raise ValueError(f"{type(model).__name__} has no hook {hook_name!r}")
    probe = torch.zeros(1, context_size, dtype=torch.long, device=model.device)
    layer = int(hook_name.split(".")[1]) + 1 if hook_name.startswith("blocks.") else None
    with torch.no_grad():
        _, cache = model.run_with_cache(probe, names_filter=[hook_name], stop_at_layer=layer)
    return int(flat_features(cache[hook_name]).shape[-1])


def train_sae_with_runner(model: Any, hook_name: str, windows: torch.Tensor, *, expansion: int = 4, k: int = 16,
                          steps: int = 300, batch_size: int = 512, lr: float = 1e-3, seed: int = 0,
                          output_path: str | Path | None = None, store_batch_size: int = 16,
                          progress: bool = False) -> Any:
    """A TopK SAE on ``hook_name`` trained by SAELens' ``LanguageModelSAETrainingRunner``.

    model: any hooked model with TransformerLens' interface (HookedMONET, HookedDense), passed as
    ``override_model``; windows [n, context] token ids, passed as a pre-tokenized HF dataset
    (``override_dataset``), fed as they are (no BOS added, no separators). Trains for
    ``steps * batch_size`` tokens; SAELens estimates the activation scale and folds it into the
    weights. The runner saves the SAE (``output_path``, default a temporary folder) and the
    inference SAE is loaded back from there with ``SAE.load_from_disk`` and returned (eval mode,
    no gradients). W&B logging and checkpoints are off; nothing touches the network."""
    import datasets
    from sae_lens import SAE, LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, TopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig

    windows = torch.as_tensor(windows, dtype=torch.long)
    if windows.dim() != 2 or len(windows) == 0:
        raise ValueError(f"windows must be a non-empty [n, context] tensor of token ids, got {tuple(windows.shape)}")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    context = int(windows.shape[1])
    d_in = hook_width(model, hook_name)
    d_sae = expansion * d_in
    device = str(model.device)
    cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=min(k, d_sae), device=device, dtype="float32",
                                  normalize_activations="expected_average_only_in",
                                  rescale_acts_by_decoder_norm=False),
        model_name=model_name(model), model_class_name=type(model).__name__, hook_name=hook_name,
        dataset_path="override_dataset", is_dataset_tokenized=True, streaming=False, context_size=context,
        prepend_bos=False, sequence_separator_token=None, training_tokens=steps * batch_size,
        train_batch_size_tokens=batch_size, store_batch_size_prompts=store_batch_size,
        n_batches_in_buffer=max(2, math.ceil(2 * batch_size / context)), device=device, seed=seed, lr=lr,
        lr_end=lr / 10, lr_warm_up_steps=min(20, steps // 10), dead_feature_window=max(50, steps // 4),
        feature_sampling_window=max(100, steps), n_batches_for_norm_estimate=min(10, steps),
        logger=LoggingConfig(log_to_wandb=False), checkpoint_path=None, output_path=None, verbose=False)
    dataset = datasets.Dataset.from_dict({"tokens": windows.tolist()})
    torch.manual_seed(seed)
    with contextlib.ExitStack() as stack:
        folder = Path(output_path) if output_path is not None else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="sae_")))
        cfg.output_path = str(folder)
        with _quiet_sae_lens(not progress), _signal_handlers_restored():
            runner = LanguageModelSAETrainingRunner(cfg, override_dataset=dataset, override_model=model)
            runner.run()
        sae = SAE.load_from_disk(str(folder), device=device)
    sae.eval()
    for p in sae.parameters():
        p.requires_grad_(False)
    return sae


@contextlib.contextmanager
def _signal_handlers_restored() -> Iterator[None]:
    """SAELens' runner installs SIGINT/SIGTERM handlers; put the caller's back afterwards."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


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


SAE_TRAINERS = ("runner", "iterator")


def train_saes(model: Any, corpus: Any, *, layers: Sequence[int] | None = None, hook_template: str = SAE_HOOK,
               labels: str | Sequence[str] | None = None, split: str = "train", tokens_per_label: int = 1024,
               seq_len: int = 64, expansion: int = 4, k: int = 16, steps: int = 300, batch_size: int = 512,
               lr: float = 1e-3, holdout: float = 0.1, seed: int = 0, progress: bool = False,
               trainer: str = "runner") -> SAEBank:
    """Train one TopK SAE per layer on ``hook_template`` activations (default the MLP output
    ``blocks.{l}.hook_mlp_out``) of ``tokens_per_label`` training tokens of every label.

    trainer "runner" (default): SAELens' LanguageModelSAETrainingRunner on the model itself
    (:func:`train_sae_with_runner`); ``holdout`` of the windows (a random share) is kept out of
    training to measure FVU. "iterator": SAELens' SAETrainer on cached activations, ``holdout``
    a random share of the activations."""
    if trainer not in SAE_TRAINERS:
        raise ValueError(f"trainer must be one of {SAE_TRAINERS}, got {trainer!r}")
    t0 = time.perf_counter()
    layers = list(range(_n_layers(model))) if layers is None else [int(x) for x in layers]
    saes, mean_active, fvu, l0 = {}, {}, {}, {}
    if trainer == "runner":
        windows = _label_windows(corpus, labels, split, tokens_per_label, seq_len)
        order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(seed))
        n_hold = min(int(len(windows) * holdout), len(windows) - 1)
        held_w, train_w = windows[order[:n_hold]], windows[order[n_hold:]]
        train_acts = capture_activations(model, train_w, layers, hook_template=hook_template)
        held_acts = capture_activations(model, held_w, layers, hook_template=hook_template) if n_hold else train_acts
        for layer in layers:
            sae = train_sae_with_runner(model, hook_template.format(layer=layer), train_w, expansion=expansion, k=k,
                                        steps=steps, batch_size=batch_size, lr=lr, seed=seed + layer,
                                        progress=progress)
            mu, _, _ = sae_quality(sae, train_acts[layer])
            _, layer_fvu, layer_l0 = sae_quality(sae, held_acts[layer])
            saes[layer], mean_active[layer], fvu[layer], l0[layer] = sae, mu, layer_fvu, layer_l0
        n_tokens = int(train_w.numel())
        how = "sae_lens.LanguageModelSAETrainingRunner (override_model)"
    else:
        acts = collect_activations(model, corpus, layers, hook_template=hook_template, labels=labels, split=split,
                                   tokens_per_label=tokens_per_label, seq_len=seq_len)
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
        n_tokens = int(len(acts[layers[0]]))
        how = "sae_lens.SAETrainer (activation iterator)"
    info = dict(model=model_name(model), hook_template=hook_template, tokens=n_tokens, trainer=how,
                expansion=expansion, k=k, steps=steps, batch_size=batch_size, lr=lr, seconds=time.perf_counter() - t0)
    return SAEBank(model, saes, mean_active, hook_template, fvu, l0, info)


__all__ = ["SAE_TRAINERS", "capture_activations", "collect_activations", "hook_width", "sae_quality", "train_sae",
           "train_sae_with_runner", "train_saes"]
