"""MonetConfig: every field of a released MONET ``config.json``, plus presets for the releases.

The released checkpoints (Hugging Face org ``MonetLLM``) store a Llama-style config with
``model_type: "monet"`` and the ``moe_*`` fields below. ``MonetConfig`` reads and writes that file
and validates it, naming the offending field in every error.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

DECOMPOSITIONS = ("vertical", "horizontal")
# How the router turns logits into the two routing factors:
#   "threshold": the released BatchNorm-quantile rule (variable number of kept experts).
#   "topk":      exact top-k per head (k = moe_topk), softmax over the kept logits.
#   "top1":      each head keeps exactly one i and one j (the top-1 multi-head variant; see
#                monet_interp.components.router for the gate design).
ROUTINGS = ("threshold", "topk", "top1")
# The model_type of a config.json without one (MONET's released configs always carry it).
DEFAULT_MODEL_TYPE = "monet"


class ConfigError(ValueError):
    """A MONET config field has an invalid value."""


class TransformerLensAliases:
    """TransformerLens-style names for the HF config fields (ActivationCache and SAELens read them)."""

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def n_layers(self) -> int:
        return self.num_hidden_layers

    @property
    def d_model(self) -> int:
        return self.hidden_size

    @property
    def n_heads(self) -> int:
        return self.num_attention_heads

    @property
    def d_head(self) -> int:
        return self.head_dim

    @property
    def d_vocab(self) -> int:
        return self.vocab_size

    @property
    def n_ctx(self) -> int:
        return self.max_position_embeddings


C = TypeVar("C", bound="ModelConfig")


@dataclass
class ModelConfig(TransformerLensAliases):
    """What the configs of this project's models share (MonetConfig, DenseConfig): the Llama
    fields of config.json (defaults: MONET's; DenseConfig overrides some), the HF-style config.json
    round trip (unknown keys kept in ``extra``), validation of the Llama fields with the offending
    field named, and the TransformerLens aliases.

    Subclasses are dataclasses adding their own fields and ``model_type``, and set ``MODEL_TYPE``
    (the config.json ``model_type``) and ``ARCHITECTURE``."""

    MODEL_TYPE: ClassVar[str] = ""
    ARCHITECTURE: ClassVar[str] = ""
    POSITIVE_INT_FIELDS: ClassVar[tuple[str, ...]] = ()
    ACTIVATION_HINT: ClassVar[str] = 'must be "relu2"'

    vocab_size: int = 32000
    hidden_size: int = 2048
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_key_value_heads: int | None = None
    hidden_act: str = "relu2"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    attention_bias: bool = False
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = None
    initializer_range: float = 0.02
    # Unknown keys of a config.json are kept here so that a round trip loses nothing.
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    # Where the model lives (set by the hooked model; never written to config.json).
    device: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        self.validate()

    def _fail(self, name: str, why: str) -> None:
        raise ConfigError(f"{type(self).__name__}.{name}={getattr(self, name)!r}: {why}")

    def validate(self) -> None:
        """Check every field (ConfigError naming the first bad one); ``validate_model`` adds the
        checks of the model type."""
        fail = self._fail
        for name in self.POSITIVE_INT_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                fail(name, "must be a positive integer")
        if self.model_type != self.MODEL_TYPE:
            fail("model_type", f'must be "{self.MODEL_TYPE}"')
        if self.hidden_act != "relu2":
            fail("hidden_act", self.ACTIVATION_HINT)
        if self.hidden_size % self.num_attention_heads:
            fail("num_attention_heads", f"must divide hidden_size={self.hidden_size}")
        if self.num_attention_heads % self.num_key_value_heads:
            fail("num_key_value_heads", f"must divide num_attention_heads={self.num_attention_heads}")
        if self.head_dim % 2:
            fail("hidden_size", "hidden_size / num_attention_heads must be even for rotary embeddings")
        self.validate_model()
        if not isinstance(self.rms_norm_eps, (int, float)) or self.rms_norm_eps <= 0:
            fail("rms_norm_eps", "must be a positive number")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is not None and not (0 <= value < self.vocab_size):
                fail(name, f"must be in [0, vocab_size={self.vocab_size})")

    def validate_model(self) -> None:
        """Checks of one model type (subclasses)."""

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("extra", "device")}
        out["architectures"] = [self.ARCHITECTURE]
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a JSON object, got {type(data).__name__}")
        if "model_type" not in data and cls.MODEL_TYPE != DEFAULT_MODEL_TYPE:
            raise ConfigError(f"config has no model_type; {cls.__name__} needs model_type={cls.MODEL_TYPE!r} "
                              f"(a config without one is read as {DEFAULT_MODEL_TYPE!r})")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "device"}
        kwargs = {"model_type": DEFAULT_MODEL_TYPE, **{k: v for k, v in data.items() if k in known}}
        extra = {k: v for k, v in data.items() if k not in known and k != "architectures"}
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if isinstance(kwargs.get(key), list):  # some configs list several eos ids
                kwargs[key] = kwargs[key][0]
        try:
            return cls(**kwargs, extra=extra)
        except TypeError as err:  # pragma: no cover - defensive
            raise ConfigError(str(err)) from err

    def to_json_file(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_json_file(cls: type[C], path: str | Path) -> C:
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path} is not valid JSON: {err}") from err
        return cls.from_dict(data)

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)


@dataclass
class MonetConfig(ModelConfig):
    MODEL_TYPE: ClassVar[str] = "monet"
    ARCHITECTURE: ClassVar[str] = "MonetForCausalLM"
    ACTIVATION_HINT: ClassVar[str] = 'MONET uses "relu2" (squared ReLU); no other activation is supported'
    POSITIVE_INT_FIELDS: ClassVar[tuple[str, ...]] = (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "max_position_embeddings", "moe_dim", "moe_heads", "moe_experts", "moe_topk", "moe_groups")

    rope_scaling: dict | None = None
    moe_dim: int = 8
    moe_heads: int = 8
    moe_experts: int = 512
    moe_topk: int = 8
    moe_groups: int = 4
    moe_decompose: str = "vertical"
    # Not in released configs (written only when it differs from the default):
    moe_routing: str = "threshold"
    # Per-expert selection biases in the router (loss-free load balancing while training; see
    # monet_interp.components.router). Not in released configs; written only when True.
    moe_selection_bias: bool = False
    model_type: str = "monet"

    # ------------------------------------------------------------------ derived sizes
    @property
    def num_routers(self) -> int:
        return math.ceil(self.num_hidden_layers / self.moe_groups)

    @property
    def router_layers(self) -> list[int]:
        return list(range(0, self.num_hidden_layers, self.moe_groups))

    def group_of_layer(self, layer: int) -> int:
        """Routing group (index of the router) whose factors layer ``layer`` uses."""
        return layer // self.moe_groups

    def layers_of_group(self, group: int) -> list[int]:
        start = group * self.moe_groups
        return list(range(start, min(start + self.moe_groups, self.num_hidden_layers)))

    @property
    def is_vertical(self) -> bool:
        return self.moe_decompose == "vertical"

    def num_parameters(self) -> int:
        """Parameter count from the formula in the paper's appendix (no buffers)."""
        d, e, m, h = self.hidden_size, self.moe_experts, self.moe_dim, self.moe_heads
        kv = self.num_key_value_heads * self.head_dim
        attn = 2 * d * d + 2 * d * kv
        moe = 2 * d * e * m + e * m + e * d  # u (+bias) and v, plus the expert biases b
        per_layer = attn + 2 * d + moe
        routers = self.num_routers * 2 * d * h * e
        embeddings = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return self.num_hidden_layers * per_layer + routers + embeddings + d

    # ------------------------------------------------------------------ validation
    def validate_model(self) -> None:
        fail = self._fail
        if self.moe_decompose not in DECOMPOSITIONS:
            fail("moe_decompose", f"unknown decomposition; expected one of {DECOMPOSITIONS}")
        if not isinstance(self.moe_selection_bias, bool):
            fail("moe_selection_bias", "must be true or false")
        if self.moe_routing not in ROUTINGS:
            fail("moe_routing", f"unknown routing; expected one of {ROUTINGS}")
        if self.moe_decompose == "vertical":
            if self.moe_dim % 2:
                fail("moe_dim", "must be even for the vertical decomposition (each half gets moe_dim/2)")
            if self.hidden_size % 2:
                fail("hidden_size", "must be even for the vertical decomposition")
        if self.moe_topk > self.moe_experts:
            fail("moe_topk", f"must be <= moe_experts={self.moe_experts}")
        if self.moe_routing == "threshold" and self.moe_topk >= self.moe_experts:
            fail("moe_topk", "threshold routing needs moe_topk < moe_experts")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("type", self.rope_scaling.get("rope_type"))
            if kind not in ("linear", "default"):
                fail("rope_scaling", 'only None, {"type": "linear", "factor": f} are supported')

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if out["moe_routing"] == "threshold":
            del out["moe_routing"]
        if not out["moe_selection_bias"]:
            del out["moe_selection_bias"]
        return out


# ---------------------------------------------------------------------------- presets
_SIZES = {
    # size: (layers, d, attention heads, moe_dim, moe_heads)
    "850M": (24, 1536, 12, 12, 6),
    "1.4B": (24, 2048, 16, 16, 8),
    "4.1B": (32, 3072, 24, 24, 12),
}


def _release(size: str, decompose: str) -> MonetConfig:
    layers, d, heads, m, h = _SIZES[size]
    return MonetConfig(vocab_size=32000, hidden_size=d, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=heads, moe_dim=m,
                       moe_heads=h, moe_experts=512, moe_topk=8, moe_groups=4,
                       moe_decompose=decompose)


def released_presets() -> dict[str, MonetConfig]:
    """Configs of the released MONET checkpoints, keyed by their hub id."""
    presets: dict[str, MonetConfig] = {}
    for size in _SIZES:
        for short, decompose in (("vd", "vertical"), ("hd", "horizontal")):
            presets[f"MonetLLM/monet-{short}-{size}-100BT-hf"] = _release(size, decompose)
    presets["MonetLLM/codemonet-vd-1.4B-100BT-hf"] = _release("1.4B", "vertical")
    presets["MonetLLM/monet-vd-1.4B-100BT-chat-hf"] = _release("1.4B", "vertical")
    return presets
