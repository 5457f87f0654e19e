"""Train MONET (VD/HD, threshold/top-k/top-1 routing) and the dense baseline on a labelled corpus.

    from monet_interp.training import TrainConfig, train
    result = train(TrainConfig(model="vd", corpus="data/corpus", out="runs/vd", steps=1000))
    # or: monet-interp train --model vd --corpus data/corpus --out runs/vd --steps 1000

Objective (paper): L = L_LM + lambda (L_unif + L_amb), lambda = 1e-3, aux losses averaged over
routing groups (``monet_interp.training.losses``). Routers are trained (every parameter has
requires_grad). "threshold" routing uses BatchNorm *batch* statistics while training
(``model.set_router_batch_stats(True)``, which also updates the running statistics) and the
running statistics for every evaluation; "topk" and "top1" routing use no statistics. For "top1"
each head keeps one i and one j, gated by the full softmax probability of the chosen expert (the
router's own design), and the aux losses see the full softmax.

``unif_probs`` chooses what L_unif averages: "routed" (default; the paper's wording: g, exact zeros
for experts a token does not keep, so an expert no token keeps gets no gradient) or "softmax"
(the full softmax of the raw logits for every routing rule). ``aux_weight`` is lambda.

Routing health beyond the paper (all off by default, so the defaults are the paper's recipe):
``balance_rate`` u > 0 gives the routers per-expert selection biases (saved with the model) that
shift which experts are kept, never g, nudged after every step toward even load (loss-free
balancing; ``balance_target`` "absolute": u * sign(k/E - load), "mean": u * sign(mean load - load)
re-centred per head, see ``losses.balance_bias_step``); ``z_loss_weight`` adds the router z-loss; ``routing_warmup_steps`` anneals
the threshold sigma from 0 over that many steps. Every step's record has ``max_vio`` (maximal
load violation) and ``dead_in_batch`` (share of halves no token of the batch keeps) per routing
group; every evaluation adds a ``health`` record (dead pairs/rows/columns on validation text).
``label_power`` p draws training labels with probability ~ (train tokens)^p (0: uniform).

Optimisation: AdamW (no weight decay on norms, biases and expert biases), linear warmup then
cosine decay to ``min_lr_ratio * lr``, gradient-norm clipping; ``precision``: bf16 autocast on
CUDA by default, on CPU with ``precision="bfloat16"`` (matmuls in bf16; weights, optimizer,
routing, norms and loss in float32).

Determinism and resume: the training batch of step s is a pure function of (seed, s) (a fresh
``torch.Generator`` seeded from both), so a resumed run sees exactly the batches an uninterrupted
run would. ``out/checkpoint/`` holds an HF-format model (loadable by ``HookedMONET.from_pretrained``
or ``HookedDense.from_pretrained``) plus ``trainer_state.pt`` (optimizer, scheduler, step, RNG
states, sampler state, history); it is replaced atomically (write ``checkpoint.tmp``, rename).
``resume=True`` continues from it. ``stop_after=N`` ends the run after step N with a checkpoint
(to simulate an interruption) without changing the schedule.

At the end ``out/`` holds the final model (config.json, model.safetensors, tokenizer.json),
``training_manifest.json`` (configs, tokens seen, wall time, machine, corpus manifest sha256,
per-label validation and test bits per byte, expert health) and ``history.jsonl``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monet_interp.progress import progress_bar

from monet_interp import loading
from monet_interp.config import MonetConfig
from monet_interp.model import HookedMONET
from monet_interp.tokenizer import MonetTokenizer
from monet_interp.dense import HookedDense, matched_dense_config
from monet_interp.training.health import format_health, health_summary, model_health
from monet_interp.training.losses import (AUX_WEIGHT, BALANCE_TARGETS, balance_bias_step, expert_load, max_load_violation,
                                          router_z_loss, routing_aux_losses)
from monet_interp.evaluation import token_byte_lengths
from monet_interp.training.metrics import evaluate_sampled, evaluate_windows, mean_bpb

MODEL_KINDS = ("vd", "hd", "top1", "dense")
STATE_NAME = "trainer_state.pt"
CHECKPOINT_DIR = "checkpoint"
MANIFEST_NAME = "training_manifest.json"
HISTORY_NAME = "history.jsonl"
# TrainConfig fields that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = {"resume", "stop_after", "progress", "threads", "device", "out", "corpus", "tokenizer",
                     "eval_every", "checkpoint_every", "log_every", "test_windows", "health_batches"}


def changed_settings(saved: dict[str, Any], config: "TrainConfig") -> list[str]:
    """The TrainConfig fields (outside RESUMABLE_CHANGES) in which ``config`` differs from a run's
    saved config dict; a field the saved run predates counts with its default."""
    field_defaults = TrainConfig().to_dict()
    return sorted(k for k, v in config.to_dict().items()
                  if k not in RESUMABLE_CHANGES and saved.get(k, field_defaults[k]) != v)


@dataclass
class TrainConfig:
    """Everything that defines a training run (written to the checkpoint and the manifest)."""

    model: str = "vd"  # vd | hd | top1 (VD with top-1 routing) | dense
    corpus: str = "data/corpus"
    out: str = "runs/monet-vd"
    steps: int = 1000
    batch_size: int = 32
    seq_len: int = 128
    # optimisation
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    aux_weight: float = AUX_WEIGHT
    unif_probs: str = "routed"  # "routed": g (paper); "softmax": full softmax of the logits (see losses)
    # routing-health options beyond the paper's recipe (all off by default = the paper's recipe)
    z_loss_weight: float = 0.0  # router z-loss weight
    balance_rate: float = 0.0  # u of loss-free balancing (per-expert selection bias); 0 = off
    balance_target: str = "absolute"  # "absolute": load -> k/E per expert, uncentred; "mean": load -> mean, centred
    routing_warmup_steps: int = 0  # threshold routing: sigma annealed from 0 to its value over these steps
    label_power: float = 0.0  # training labels drawn with probability ~ train_tokens ** label_power (0 = uniform)
    seed: int = 0
    # model shape (MONET); the dense baseline copies d_model/n_layers/n_heads and matches parameters
    d_model: int = 192
    n_layers: int = 4
    n_heads: int = 4
    moe_experts: int = 64
    moe_heads: int = 4
    moe_dim: int = 8
    moe_topk: int = 4
    moe_groups: int = 2
    routing: str | None = None  # None: "threshold" for vd/hd, "top1" for top1
    d_mlp: int | None = None  # dense only; None: parameter count matched to the MONET shape
    vocab_size: int | None = None  # None: the corpus tokenizer's
    max_position_embeddings: int = 1024
    init_std: float = 0.02
    # evaluation, logging, checkpoints
    eval_every: int = 250
    eval_batches: int = 2  # per label
    eval_batch_size: int = 16
    test_windows: int = 64  # per label, final held-out (test split) evaluation; 0 disables
    health_batches: int = 8
    checkpoint_every: int = 250
    log_every: int = 10
    labels: list[str] | None = None  # None: every label of the corpus
    tokenizer: str | None = None  # None: the corpus tokenizer
    device: str = "cpu"
    # "auto": bf16 autocast on CUDA, float32 on CPU; "bfloat16": bf16 autocast (matmuls) on any device,
    # float32 master weights, router/softmax/norm/loss math in float32; "float32": no autocast.
    precision: str = "auto"
    threads: int | None = None
    resume: bool = False
    stop_after: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.model not in MODEL_KINDS:
            raise ValueError(f"TrainConfig.model={self.model!r}: expected one of {MODEL_KINDS}")
        if self.precision not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"TrainConfig.precision={self.precision!r}: expected auto, float32 or bfloat16")
        if self.unif_probs not in ("routed", "softmax"):
            raise ValueError(f"TrainConfig.unif_probs={self.unif_probs!r}: expected routed or softmax")
        if self.routing is not None and self.routing not in ("threshold", "topk", "top1"):
            raise ValueError(f"TrainConfig.routing={self.routing!r}: expected threshold, topk or top1")
        for name in ("steps", "batch_size", "seq_len", "eval_batch_size", "log_every", "eval_every",
                     "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r}: must be >= 1")
        if self.warmup_steps < 0 or not (0.0 <= self.min_lr_ratio <= 1.0) or self.lr <= 0:
            raise ValueError("TrainConfig: need lr > 0, warmup_steps >= 0 and 0 <= min_lr_ratio <= 1")
        if self.z_loss_weight < 0 or self.balance_rate < 0 or self.routing_warmup_steps < 0 or self.aux_weight < 0:
            raise ValueError("TrainConfig: aux_weight, z_loss_weight, balance_rate and routing_warmup_steps must be >= 0")
        if self.balance_target not in BALANCE_TARGETS:
            raise ValueError(f"TrainConfig.balance_target={self.balance_target!r}: expected one of {BALANCE_TARGETS}")
        if not 0.0 <= self.label_power <= 1.0:
            raise ValueError(f"TrainConfig.label_power={self.label_power!r}: must be in [0, 1]")
        if self.stop_after is not None and not (1 <= self.stop_after <= self.steps):
            raise ValueError(f"TrainConfig.stop_after={self.stop_after}: must be in [1, steps={self.steps}]")

    @property
    def autocast_bf16(self) -> bool:
        return self.precision == "bfloat16" or (self.precision == "auto" and self.device.startswith("cuda"))

    @property
    def routing_rule(self) -> str | None:
        if self.model == "dense":
            return None
        return self.routing or ("top1" if self.model == "top1" else "threshold")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    model: Any
    history: list[dict[str, Any]]
    val: dict[str, dict]
    test: dict[str, dict]
    health: dict[str, Any] | None
    manifest: dict[str, Any]
    out: Path | None
    finished: bool = True  # False when stopped early by stop_after
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- building blocks
def build_model(config: TrainConfig, vocab_size: int, tokenizer: MonetTokenizer | None = None) -> Any:
    """A freshly initialised (seeded) HookedMONET or HookedDense for ``config``."""
    monet = MonetConfig(
        vocab_size=vocab_size, hidden_size=config.d_model, num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads, max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        initializer_range=config.init_std, moe_dim=config.moe_dim, moe_heads=config.moe_heads,
        moe_experts=config.moe_experts, moe_topk=config.moe_topk, moe_groups=config.moe_groups,
        moe_decompose="horizontal" if config.model == "hd" else "vertical",
        moe_routing=config.routing_rule or "threshold", moe_selection_bias=config.balance_rate > 0)
    if config.model == "dense":
        dense = matched_dense_config(monet)
        if config.d_mlp is not None:
            dense = dataclasses.replace(dense, intermediate_size=config.d_mlp)
        model = HookedDense(dense, tokenizer)
    else:
        model = HookedMONET(monet, tokenizer)
    model.init_weights(config.seed)
    for param in model.parameters():  # routers included: they are trained here
        param.requires_grad_(True)
    return model.to(config.device)


def batch_generator(seed: int, step: int) -> torch.Generator:
    """The sampler of training step ``step``: a pure function of (seed, step)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7_919 + 17) % (2**63 - 1))


def train_batch(corpus: Any, config: TrainConfig, step: int) -> torch.Tensor:
    return corpus.sample_batch("train", config.batch_size, config.seq_len, batch_generator(config.seed, step),
                               labels=config.labels, label_power=config.label_power)


def _routers(model: Any) -> list[Any]:
    return [block.moe.router for block in getattr(model, "blocks", []) if getattr(block, "moe", None) is not None
            and block.moe.router is not None]


def train_step(model: Any, batch: torch.Tensor, config: TrainConfig, optimizer: torch.optim.Optimizer,
               scheduler: Any, params: list[torch.Tensor], step: int) -> dict[str, Any]:
    """One optimisation step (forward with routing, L_LM + aux + z-loss, backward, clipping, AdamW,
    scheduler, selection-bias update); returns the step's history record (without timing)."""
    routers_modules = _routers(model)
    warm = config.routing_warmup_steps
    scale = min(1.0, step / warm) if warm and config.routing_rule == "threshold" else 1.0
    for router in routers_modules:
        router.threshold_scale = scale
    try:
        device_type = "cuda" if config.device.startswith("cuda") else "cpu"
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=config.autocast_bf16):
            lm_loss, routers = model(batch, return_type="loss", return_routing=True)
    finally:
        for router in routers_modules:
            router.threshold_scale = 1.0
    loss = lm_loss
    record: dict[str, Any] = {}
    if routers:
        unif, amb = routing_aux_losses(routers, unif_probs=config.unif_probs)
        loss = loss + config.aux_weight * (unif + amb)
        record.update(l_unif=float(unif.detach()), l_amb=float(amb.detach()))
        if config.z_loss_weight > 0:
            z_loss = router_z_loss(routers)
            loss = loss + config.z_loss_weight * z_loss
            record["z_loss"] = float(z_loss.detach())
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    if routers:
        vio, dead = [], []
        target_load = (1 if config.routing_rule == "top1" else config.moe_topk) / config.moe_experts
        for router, routing in zip(routers_modules, routers):
            load_row, load_col = expert_load(routing.g_row), expert_load(routing.g_col)
            vio.append(round(max(max_load_violation(load_row), max_load_violation(load_col)), 4))
            dead.append(round(0.5 * float((load_row.sum(0) == 0).float().mean() + (load_col.sum(0) == 0).float().mean()),
                              4))
            if config.balance_rate > 0:
                for bias, load in ((router.selection_bias1, load_row), (router.selection_bias2, load_col)):
                    balance_bias_step(bias, load, config.balance_rate, config.balance_target, target_load)
        record.update(max_vio=vio, dead_in_batch=dead)
    tokens = batch.shape[0] * (batch.shape[1] - 1)
    return {"step": step + 1, "loss": float(loss.detach()), "lm_loss": float(lm_loss.detach()), "lr": lr,
            "grad_norm": float(grad_norm), "tokens": (step + 1) * tokens, **record}


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices (attention, experts, routers, embeddings); not norms, biases, expert biases."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if param.dim() < 2 or leaf in ("b", "b1", "b2", "bias"):
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warmup over ``warmup_steps`` then cosine decay to ``min_lr_ratio`` at ``steps``."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _fsync_dir(folder: Path) -> None:
    for item in folder.iterdir():
        if item.is_file():
            with open(item, "rb") as handle:
                os.fsync(handle.fileno())


def save_model(model: Any, folder: Path) -> None:
    model.save_pretrained(folder)


def load_weights(model: Any, folder: Path) -> None:
    """Copy the weights (and router statistics) of a checkpoint folder into ``model`` in place."""
    model.load_hf_state_dict(loading.read_state_dict(folder), str(folder))


def write_checkpoint(out: Path, model: Any, state: dict[str, Any]) -> Path:
    """Write ``out/checkpoint`` atomically: build ``checkpoint.tmp``, then swap it in."""
    tmp, final, old = out / (CHECKPOINT_DIR + ".tmp"), out / CHECKPOINT_DIR, out / (CHECKPOINT_DIR + ".old")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_model(model, tmp)
    _atomic_torch_save(state, tmp / STATE_NAME)
    _fsync_dir(tmp)
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)
    return final


def find_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint folder of a run (``checkpoint``, else ``checkpoint.old``)."""
    for name in (CHECKPOINT_DIR, CHECKPOINT_DIR + ".old"):
        folder = out / name
        if (folder / STATE_NAME).is_file() and (folder / loading.CONFIG_NAME).is_file():
            return folder
    return None


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _machine(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name(0)}"
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()}-core CPU ({name}), {torch.get_num_threads()} torch threads"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _resolve_tokenizer(config: TrainConfig, corpus: Any) -> MonetTokenizer | None:
    if config.tokenizer is not None:
        return MonetTokenizer.from_file(config.tokenizer)
    manifest = getattr(corpus, "manifest", None)
    path = getattr(corpus, "path", None)
    if isinstance(manifest, dict) and path is not None and "tokenizer" in manifest:
        candidate = Path(path) / manifest["tokenizer"].get("file", "tokenizer.json")
        if candidate.is_file():
            return MonetTokenizer.from_file(candidate)
    return None


def _labels(config: TrainConfig, corpus: Any) -> list[str]:
    return list(config.labels) if config.labels is not None else list(corpus.labels)


def _set_mode(model: Any, config: TrainConfig, training: bool) -> None:
    model.train(training)
    model.set_router_batch_stats(training and config.routing_rule == "threshold")


def validate(model: Any, corpus: Any, config: TrainConfig, byte_lengths: torch.Tensor | None,
             split: str = "val") -> dict[str, dict]:
    """Per-label bpb on the fixed validation windows (eval mode, running router statistics)."""
    was_training = model.training
    _set_mode(model, config, False)
    try:
        return evaluate_sampled(model, corpus, split, _labels(config, corpus), config.eval_batches,
                                config.eval_batch_size, config.seq_len, config.seed + 1, byte_lengths)
    finally:
        _set_mode(model, config, was_training)


def test_eval(model: Any, corpus: Any, config: TrainConfig, byte_lengths: torch.Tensor | None,
              split: str = "test") -> dict[str, dict]:
    """Per-label held-out bpb on evenly spread non-overlapping windows of each label's split."""
    _set_mode(model, config, False)
    labels = _labels(config, corpus)
    if hasattr(corpus, "tokens"):
        return evaluate_windows(model, corpus, split, labels, config.test_windows, config.seq_len,
                                config.eval_batch_size, byte_lengths)
    batches = max(1, config.test_windows // config.eval_batch_size)
    return evaluate_sampled(model, corpus, split, labels, batches, config.eval_batch_size, config.seq_len,
                            config.seed + 2, byte_lengths)


def health_batches(corpus: Any, config: TrainConfig, split: str = "val") -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(config.seed + 3)
    return [corpus.sample_batch(split, config.eval_batch_size, config.seq_len, generator, labels=config.labels)
            for _ in range(config.health_batches)]


# ---------------------------------------------------------------------------- training
def train(config: TrainConfig, corpus: Any = None) -> TrainResult:
    """Train (or resume) one model; see the module docstring. ``corpus``: a loaded corpus object
    with ``labels`` and ``sample_batch`` (default: ``Corpus.load(config.corpus)``)."""
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    if corpus is None:
        from monet_interp.data import Corpus

        corpus = Corpus.load(config.corpus)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    _seed_everything(config.seed)
    tokenizer = _resolve_tokenizer(config, corpus)
    vocab_size = config.vocab_size or getattr(corpus, "vocab_size", None)
    if vocab_size is None:
        raise ValueError("TrainConfig.vocab_size is needed: the corpus does not say its vocabulary size")
    byte_lengths = token_byte_lengths(tokenizer, vocab_size) if tokenizer is not None else None
    model = build_model(config, int(vocab_size), tokenizer)
    optimizer = torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr,
                                  betas=(config.beta1, config.beta2), eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
    start, history, wall = 0, [], 0.0

    if config.resume:
        folder = find_checkpoint(out)
        if folder is not None:
            state = torch.load(folder / STATE_NAME, map_location="cpu", weights_only=True)
            saved = state["config"]
            changed = changed_settings(saved, config)
            if changed:
                raise ValueError(f"cannot resume {folder}: the run was started with different settings: "
                                 + ", ".join(f"{k} {saved.get(k)!r} -> {getattr(config, k)!r}" for k in changed))
            load_weights(model, folder)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            _set_rng_state(state["rng"])
            start, history, wall = state["step"], state["history"], state["wall_time_s"]

    end = config.stop_after if config.stop_after is not None else config.steps
    tokens_per_step = config.batch_size * config.seq_len
    params = [p for p in model.parameters() if p.requires_grad]
    bar = progress_bar(range(start, end), initial=start, total=config.steps, desc=f"train {config.model}",
               disable=not config.progress, mininterval=2.0, dynamic_ncols=True)
    speed = None

    def checkpoint_state(step: int) -> dict[str, Any]:
        return {"step": step, "config": config.to_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": _rng_state(),
                "sampler": {"kind": "pure function of (seed, step)", "seed": config.seed, "next_step": step},
                "history": history, "wall_time_s": wall}

    probes = health_batches(corpus, config) if config.health_batches > 0 else []  # fixed seed: built once
    _set_mode(model, config, True)
    for step in bar:
        t0 = time.perf_counter()
        batch = train_batch(corpus, config, step).to(config.device)
        record = train_step(model, batch, config, optimizer, scheduler, params, step)
        elapsed = time.perf_counter() - t0
        wall += elapsed
        speed = tokens_per_step / elapsed if speed is None else 0.9 * speed + 0.1 * tokens_per_step / elapsed
        record["wall_time_s"] = wall
        history.append(record)
        bar.set_postfix(loss=f"{record['lm_loss']:.3f}", tok_s=f"{speed:.0f}", refresh=False)
        done = step + 1
        if done % config.eval_every == 0 and done < config.steps:
            val = validate(model, corpus, config, byte_lengths)
            history.append({"step": done, "eval": "val", "bpb": {k: v["bpb"] for k, v in val.items()},
                            "mean_bpb": mean_bpb(val)})
            message = f"step {done}: val bpb {mean_bpb(val):.4f}"
            if config.model != "dense" and config.health_batches > 0:
                health = model_health(model, probes)
                history.append({"step": done, "eval": "health", **health_summary(health)})
                message += ", dead pairs " + " ".join(f"{g['dead_pair_share']:.0%}" for g in health["groups"])
            bar.write(message)
        if done % config.checkpoint_every == 0 or done == end:
            write_checkpoint(out, model, checkpoint_state(done))
            _write_history(out, history)  # readable while the run goes on (scripts/plot_training.py)
    bar.close()
    finished = end == config.steps  # the checkpoint at done == end wrote the history
    if not finished:
        return TrainResult(model, history, {}, {}, None, {}, out, finished=False)

    # ------------------------------------------------------------ final evaluation and export
    val = validate(model, corpus, config, byte_lengths)
    test = test_eval(model, corpus, config, byte_lengths) if config.test_windows > 0 else {}
    health = model_health(model, probes) if config.health_batches > 0 else None
    _set_mode(model, config, False)
    history.append({"step": config.steps, "eval": "val", "bpb": {k: v["bpb"] for k, v in val.items()},
                    "mean_bpb": mean_bpb(val)})
    if health is not None and health["kind"] == "monet":
        history.append({"step": config.steps, "eval": "health", **health_summary(health)})
    save_model(model, out)
    manifest = _manifest(config, model, corpus, history, wall, val, test, health)
    _atomic_write_text(out / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")
    _write_history(out, history)
    if config.progress:
        print(f"final val bpb {mean_bpb(val):.4f}" + (f", test bpb {mean_bpb(test):.4f}" if test else ""))
        if health is not None:
            print(format_health(health))
    return TrainResult(model, history, val, test, health, manifest, out)


def _write_history(out: Path, history: list[dict[str, Any]]) -> None:
    _atomic_write_text(out / HISTORY_NAME, "".join(json.dumps(h) + "\n" for h in history))


def _objective(config: TrainConfig) -> str:
    if config.model == "dense":
        return "L_LM"
    text = "L_LM + aux_weight * (L_unif + L_amb), aux losses averaged over routing groups"
    if config.z_loss_weight > 0:
        text += " + z_loss_weight * router z-loss"
    if config.balance_rate > 0:
        text += (f"; loss-free balancing of the selection biases (u = {config.balance_rate:g}, "
                 f"{config.balance_target} target)")
    if config.routing_warmup_steps > 0:
        text += f"; threshold annealed over {config.routing_warmup_steps} steps"
    return text


def _manifest(config: TrainConfig, model: Any, corpus: Any, history: list[dict], wall: float,
              val: dict[str, dict], test: dict[str, dict], health: dict[str, Any] | None) -> dict[str, Any]:
    corpus_path = getattr(corpus, "path", None)
    corpus_manifest = Path(corpus_path) / "manifest.json" if corpus_path is not None else None
    tokens = config.steps * config.batch_size * config.seq_len
    return {
        "model_kind": config.model,
        "model_type": model.cfg.model_type,
        "routing": config.routing_rule,
        "parameters": sum(p.numel() for p in model.parameters()),
        "config": model.cfg.to_dict(),
        "train": config.to_dict(),
        "objective": _objective(config),
        "steps": config.steps,
        "tokens_seen": tokens,
        "wall_time_s": round(wall, 1),
        "train_tokens_per_s": round(tokens / wall, 1) if wall > 0 else None,
        "machine": _machine(config.device),
        "torch": torch.__version__,
        "corpus": {
            "path": str(corpus_path) if corpus_path is not None else None,
            "manifest_sha256": _sha256(corpus_manifest) if corpus_manifest and corpus_manifest.is_file() else None,
            "labels": _labels(config, corpus),
        },
        "bpb_note": "bits per byte = sum of next-token NLL / ln 2 / UTF-8 bytes of the predicted tokens "
                    "(bos/eos count 0 bytes); labels averaged unweighted",
        "final_val_bpb": {k: round(v["bpb"], 5) for k, v in val.items()},
        "final_val_bpb_mean": round(mean_bpb(val), 5),
        "test_bpb": {k: round(v["bpb"], 5) for k, v in test.items()},
        "test_bpb_mean": round(mean_bpb(test), 5) if test else None,
        "test_tokens_per_label": {k: int(v["tokens"]) for k, v in test.items()},
        "health": health,
        "final_train_lm_loss": next((h["lm_loss"] for h in reversed(history) if "lm_loss" in h), None),
    }
