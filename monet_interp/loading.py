"""Reading and writing MONET checkpoints in the Hugging Face format, by exact key names.

Conversion is a pure renaming (the layouts already match): ``hf_to_hooked_key`` /
``hooked_to_hf_key`` map one key, ``hf_to_hooked_state_dict`` / ``hooked_to_hf_state_dict`` a
whole state dict. Loading checks every key and shape and reports problems by name.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from monet_interp.config import DEFAULT_MODEL_TYPE, ConfigError

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
PICKLE_NAME = "pytorch_model.bin"
EMBEDDED_ROOT = Path(__file__).parent / "checkpoints"
# Keys some HF checkpoints carry that hold no learned state.
IGNORABLE_HF_KEYS = re.compile(r".*rotary_emb\.inv_freq$")


class CheckpointError(ValueError):
    """A checkpoint folder or file is missing, corrupt, or does not match the config."""


# (HF prefix inside a layer, hooked prefix inside a block), first match wins in both directions.
LayerRenames = tuple[tuple[str, str], ...]
MONET_LAYER_RENAMES: LayerRenames = (
    ("input_layernorm.", "ln1."),
    ("post_attention_layernorm.", "ln2."),
    ("self_attn.", "attn."),
    ("router.", "moe.router."),
    ("moe.", "moe."),
)


def hf_to_hooked_key(key: str, renames: LayerRenames = MONET_LAYER_RENAMES) -> str:
    if key == "model.embed_tokens.weight":
        return "embed.W_E"
    if key == "lm_head.weight":
        return "unembed.weight"
    if key == "model.norm.weight":
        return "ln_final.weight"
    match = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", key)
    if match:
        layer, rest = match.groups()
        for old, new in renames:
            if rest.startswith(old):
                return f"blocks.{layer}.{new}{rest[len(old):]}"
    raise KeyError(key)


def hooked_to_hf_key(key: str, renames: LayerRenames = MONET_LAYER_RENAMES) -> str:
    if key == "embed.W_E":
        return "model.embed_tokens.weight"
    if key == "unembed.weight":
        return "lm_head.weight"
    if key == "ln_final.weight":
        return "model.norm.weight"
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
    if match:
        layer, rest = match.groups()
        for old, new in renames:
            if rest.startswith(new):
                return f"model.layers.{layer}.{old}{rest[len(new):]}"
    raise KeyError(key)


def hf_to_hooked_state_dict(hf_state: dict[str, torch.Tensor], renames: LayerRenames = MONET_LAYER_RENAMES
                            ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename HF keys; returns (state dict, keys that have no counterpart)."""
    out, unknown = {}, []
    for key, value in hf_state.items():
        if IGNORABLE_HF_KEYS.fullmatch(key):
            continue
        try:
            out[hf_to_hooked_key(key, renames)] = value
        except KeyError:
            unknown.append(key)
    return out, unknown


def hooked_to_hf_state_dict(state: dict[str, torch.Tensor], renames: LayerRenames = MONET_LAYER_RENAMES
                            ) -> dict[str, torch.Tensor]:
    return {hooked_to_hf_key(key, renames): value for key, value in state.items()}


# ---------------------------------------------------------------------------- files
def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint folder: single or sharded safetensors, or a weights-only pickle."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path} is not a readable safetensors file ({err})") from err

    if (folder / SAFETENSORS_INDEX_NAME).is_file():
        try:
            index = json.loads((folder / SAFETENSORS_INDEX_NAME).read_text())
            shards = sorted(set(index["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as err:
            raise CheckpointError(f"{folder / SAFETENSORS_INDEX_NAME} is not a valid index ({err})") from err
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            if not (folder / shard).is_file():
                raise CheckpointError(f"shard {shard} named in {SAFETENSORS_INDEX_NAME} is missing from {folder}")
            state.update(load_safetensors(folder / shard))
        return state
    if (folder / SAFETENSORS_NAME).is_file():
        return load_safetensors(folder / SAFETENSORS_NAME)
    if (folder / PICKLE_NAME).is_file():
        try:
            state = torch.load(folder / PICKLE_NAME, map_location="cpu", weights_only=True)
        except Exception as err:  # UnpicklingError and friends; weights_only refuses code
            raise CheckpointError(
                f"refused to load {folder / PICKLE_NAME}: it is not a plain tensor pickle "
                f"(loading it would need code execution, or the file is corrupt): {err}") from err
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{folder / PICKLE_NAME} does not hold a flat dict of tensors")
        return state
    raise CheckpointError(f"{folder} has no {SAFETENSORS_NAME}, {SAFETENSORS_INDEX_NAME} or {PICKLE_NAME}")


def check_state_dict(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], unknown: list[str],
                     source: str, renames: LayerRenames = MONET_LAYER_RENAMES) -> None:
    """Raise one CheckpointError naming every missing, unexpected and mis-shaped key (HF names)."""
    def hf(key: str) -> str:
        return hooked_to_hf_key(key, renames)

    missing = sorted(hf(k) for k in expected if k not in found)
    unexpected = sorted(unknown + [hf(k) for k in found if k not in expected])
    wrong = sorted(f"{hf(k)}: checkpoint {tuple(found[k].shape)} vs model {tuple(v.shape)}"
                   for k, v in expected.items() if k in found and found[k].shape != v.shape)
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    if wrong:
        problems.append(f"shape mismatches: {'; '.join(wrong)}")
    if problems:
        raise CheckpointError(f"checkpoint {source} does not match its config:\n  " + "\n  ".join(problems))


def write_checkpoint(folder: Path, cfg, state: dict[str, torch.Tensor],
                     renames: LayerRenames = MONET_LAYER_RENAMES) -> None:
    """config.json (``cfg.to_json_file``) + model.safetensors with HF key names, written atomically."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    hf_state = {k: v.detach().contiguous().cpu() for k, v in hooked_to_hf_state_dict(state, renames).items()}
    tmp = folder / (SAFETENSORS_NAME + ".tmp")
    save_file(hf_state, str(tmp), metadata={"format": "pt"})
    tmp.replace(folder / SAFETENSORS_NAME)
    cfg.to_json_file(folder / CONFIG_NAME)


def embedded_names() -> list[str]:
    if not EMBEDDED_ROOT.is_dir():
        return []
    return sorted(p.name for p in EMBEDDED_ROOT.iterdir() if (p / CONFIG_NAME).is_file())


def hub_error_message(repo_id: str, err: BaseException) -> str:
    """One line: why ``repo_id`` could not be fetched, and how to get its files without network here."""
    reason = " ".join(str(err).split()) or type(err).__name__
    reason = reason if len(reason) <= 300 else reason[:297] + "..."
    return (f"could not fetch {repo_id!r} from the Hugging Face hub ({type(err).__name__}: {reason}); to use it "
            f"offline, download it where there is network with `huggingface-cli download {repo_id} --local-dir "
            f"FOLDER` (or `hf download`), copy FOLDER here and load it with monet_interp.load_model('FOLDER'); "
            f"embedded checkpoints: {', '.join(embedded_names()) or 'none'}")


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """A local folder for an embedded name, a path, or a hub id (downloaded when online)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if str(name_or_path) in embedded_names():
        return EMBEDDED_ROOT / str(name_or_path)
    if path.exists():
        raise CheckpointError(f"{path} is a file; expected a checkpoint folder (config.json + weights)")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", str(name_or_path)):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(str(name_or_path), allow_patterns=[
                "*.json", "*.safetensors", "tokenizer.model", "pytorch_model.bin"]))
        except Exception as err:
            raise CheckpointError(hub_error_message(str(name_or_path), err)) from err
    raise CheckpointError(f"no checkpoint named {str(name_or_path)!r}: not a folder, not an embedded checkpoint "
                          f"({', '.join(embedded_names()) or 'none'}), not a hub id")


# ---------------------------------------------------------------------------- model types
# config.json ``model_type`` -> (module, class) of the hooked model that loads it.
MODEL_CLASSES: dict[str, tuple[str, str]] = {
    "monet": ("monet_interp.model", "HookedMONET"),
    "dense-llama": ("monet_interp.dense", "HookedDense"),
}


def read_config(folder: Path) -> Any:
    """The parsed config.json of ``folder`` (CheckpointError when missing, ConfigError when it is
    not JSON)."""
    path = folder / CONFIG_NAME
    try:
        text = path.read_text()
    except OSError as err:
        raise CheckpointError(f"{folder} has no readable {CONFIG_NAME}") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from err


def model_type_of(config: Any) -> str | None:
    """The ``model_type`` of a parsed config.json (DEFAULT_MODEL_TYPE when absent), None when it
    is not a JSON object (the config class then reports why)."""
    return config.get("model_type", DEFAULT_MODEL_TYPE) if isinstance(config, dict) else None


def check_model_type(config: Any, model_type: str, loader: str, source: str) -> None:
    """CheckpointError (one line naming the right loader) when ``config`` is of a known model type
    other than ``model_type``; unknown types are left to the config class's own error."""
    found = model_type_of(config)
    if found is None or found == model_type or found not in MODEL_CLASSES:
        return
    right = MODEL_CLASSES[found][1]
    raise CheckpointError(f"{source} is a model_type {found!r} checkpoint, which {loader} cannot load "
                          f"(it loads {model_type!r}); use {right}.from_pretrained({source!r}) or "
                          f"monet_interp.load_model({source!r})")


def model_class(model_type: str):
    """The hooked model class for a config.json ``model_type``."""
    from importlib import import_module

    if model_type not in MODEL_CLASSES:
        raise CheckpointError(f"unknown model_type {model_type!r}; known: {', '.join(sorted(MODEL_CLASSES))}")
    module, name = MODEL_CLASSES[model_type]
    return getattr(import_module(module), name)


def load_model(name_or_path: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    """HookedMONET or HookedDense, chosen by the ``model_type`` of the checkpoint's config.json
    (an embedded name, a local HF-format folder or a hub id; arguments as in ``from_pretrained``)."""
    folder = resolve_checkpoint(name_or_path)
    config = read_config(folder)
    model_type = model_type_of(config)
    if model_type is None:
        raise ConfigError(f"{folder / CONFIG_NAME} is not a JSON object")
    return model_class(model_type).load_folder(folder, config, device=device, dtype=dtype)
