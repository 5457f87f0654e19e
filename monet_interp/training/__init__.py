"""Training MONET (VD/HD; threshold, top-k or top-1 routing) and a parameter-matched dense baseline.

    from monet_interp.training import TrainConfig, train
    result = train(TrainConfig(model="vd", corpus="data/corpus", out="runs/vd", steps=1000))

The models (HookedMONET, HookedDense, ``matched_dense_config``) live in the core
(``monet_interp.model``, ``monet_interp.dense``).

CLI: ``monet-interp train --model {vd,hd,top1,dense} --corpus DIR --out DIR --steps N``.
"""

from monet_interp.training.health import expert_health, format_health, model_health, neuron_health
from monet_interp.training.losses import (
    AUX_WEIGHT,
    ambiguity_loss,
    mean_routing_prob,
    routing_aux_losses,
    uniformity_loss,
)
from monet_interp.evaluation import token_byte_lengths
from monet_interp.training.metrics import evaluate_sampled, evaluate_windows, mean_bpb
from monet_interp.training.trainer import (
    MODEL_KINDS,
    TrainConfig,
    TrainResult,
    build_model,
    find_checkpoint,
    train,
)

__all__ = [
    "AUX_WEIGHT", "MODEL_KINDS", "TrainConfig", "TrainResult", "ambiguity_loss",
    "build_model", "evaluate_sampled", "evaluate_windows", "expert_health", "find_checkpoint", "format_health",
    "mean_bpb", "mean_routing_prob", "model_health",
    "neuron_health", "routing_aux_losses", "token_byte_lengths", "train", "uniformity_loss",
]
