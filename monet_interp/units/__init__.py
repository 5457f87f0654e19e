"""Units: what an analysis reads, measures per label, removes or scales (one protocol,
:class:`Unit`) - MONET experts, dense-MLP neurons, SAE features, or any hook's activations.

    from monet_interp.units import ExpertUnits, NeuronUnits, SAEUnits, dense_neurons, monet_experts
    experts = ExpertUnits(model)                    # every expert (i, j) of every routing group
    stats = window_statistics(model, experts, inputs)  # monet_interp.stats: {"mean", "freq"} [n_units]
    with experts.removal(torch.tensor([3, 17])):    # exact pruning through the edit API
        loss = model(tokens, return_type="loss")
"""

from monet_interp.units.base import HookUnits, Unit, UnitError, as_units, model_name
from monet_interp.units.experts import HEAD_MODES, SCOPES, ExpertUnits, count_fires, monet_experts
from monet_interp.units.neurons import NEURON_HOOK, NeuronUnits, dense_neurons
from monet_interp.units.sae import SAE_HOOK, SAE_MODES, SAEBank, SAEUnits, flat_features, sae_features, splice_sae

__all__ = [
    "HEAD_MODES", "NEURON_HOOK", "SAE_HOOK", "SAE_MODES", "SCOPES", "ExpertUnits", "HookUnits", "NeuronUnits",
    "SAEBank", "SAEUnits", "Unit", "UnitError", "as_units", "count_fires", "dense_neurons", "flat_features",
    "model_name", "monet_experts", "sae_features", "splice_sae",
]
