"""monet-interp: see, delete and steer the experts of MONET language models.

    from monet_interp import HookedMONET, ExpertEdit
    model = HookedMONET.from_pretrained("monet-vd-tiny")   # or load_model(name): MONET or dense by model_type
    logits, cache = model.run_with_cache("def main():")
    with model.edit_experts([ExpertEdit(3, 7, "prune", group=0)]):
        loss = model("def main():", return_type="loss")

Names are imported lazily: ``import monet_interp.data`` does not pay for TransformerLens.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "HookedMONET": "monet_interp.model",
    "HookedDense": "monet_interp.dense",
    "DenseConfig": "monet_interp.dense",
    "load_model": "monet_interp.loading",
    "ExpertEdit": "monet_interp.editing",
    "MonetConfig": "monet_interp.config",
    "ConfigError": "monet_interp.config",
    "released_presets": "monet_interp.config",
    "CheckpointError": "monet_interp.loading",
    "MonetTokenizer": "monet_interp.tokenizer",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'monet_interp' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
