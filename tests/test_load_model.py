"""Loading dispatch by model_type: load_model returns the right class, and each class's
from_pretrained refuses the other's checkpoint with one line naming the right loader; the
config base (ModelConfig) gives DenseConfig the same JSON handling as MonetConfig."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from monet_interp import ConfigError, DenseConfig, HookedDense, HookedMONET, MonetConfig, load_model
from monet_interp.config import ModelConfig
from monet_interp.loading import CheckpointError, hf_to_hooked_key, model_type_of, read_config, resolve_checkpoint


@pytest.mark.parametrize(("name", "cls"), [("dense-tiny", HookedDense), ("monet-vd-tiny", HookedMONET),
                                           ("monet-top1-tiny", HookedMONET)])
def test_load_model_dispatches_by_model_type(name, cls):
    model = load_model(name)
    assert type(model) is cls and model.checkpoint_path.endswith(name)
    saved = load_file(str(resolve_checkpoint(name) / "model.safetensors"))
    state = model.state_dict()
    for key, value in saved.items():
        assert torch.equal(state[hf_to_hooked_key(key, model.layer_renames)], value.float()), key


@pytest.mark.parametrize(("cls", "name", "right"), [(HookedMONET, "dense-tiny", "HookedDense"),
                                                    (HookedDense, "monet-vd-tiny", "HookedMONET")])
def test_from_pretrained_of_the_other_model_type_names_the_right_loader(cls, name, right):
    with pytest.raises(CheckpointError) as err:
        cls.from_pretrained(name)
    message = str(err.value)
    assert "\n" not in message and "model_type" in message
    assert f"{right}.from_pretrained('{name}')" in message and f"monet_interp.load_model('{name}')" in message


def test_unknown_or_missing_model_type(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    with pytest.raises(CheckpointError, match="has no readable config.json"):
        load_model(folder)
    with pytest.raises(CheckpointError, match="has no readable config.json"):
        HookedMONET.from_pretrained(folder)
    (folder / "config.json").write_text("[1, 2]")
    assert model_type_of(read_config(folder)) is None
    with pytest.raises(ConfigError, match="is not a JSON object"):
        load_model(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match="unknown model_type 'gpt2'"):
        load_model(folder)
    with pytest.raises(ConfigError, match='model_type=\'gpt2\': must be "monet"'):  # the config's own check
        HookedMONET.from_pretrained(folder)
    cfg = json.loads((resolve_checkpoint("monet-vd-tiny") / "config.json").read_text())
    del cfg["model_type"]  # a MONET config without model_type still reads as MONET
    (folder / "config.json").write_text(json.dumps(cfg))
    assert model_type_of(read_config(folder)) == "monet"
    assert MonetConfig.from_dict(cfg).model_type == "monet"
    with pytest.raises(ConfigError, match="config has no model_type; DenseConfig needs model_type='dense-llama'"):
        DenseConfig.from_dict(cfg)


@pytest.mark.parametrize("cls", [MonetConfig, DenseConfig])
def test_config_base_round_trip_and_json_errors(tmp_path, cls):
    assert issubclass(cls, ModelConfig)
    cfg = cls(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
    cfg.extra["custom_key"] = 3
    cfg.to_json_file(tmp_path / "config.json")
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["architectures"] == [cls.ARCHITECTURE] and saved["model_type"] == cls.MODEL_TYPE
    assert cls.from_json_file(tmp_path / "config.json") == cfg
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        cls.from_json_file(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match=f"{cls.__name__}.num_attention_heads=3: must divide hidden_size=32"):
        cls(hidden_size=32, num_attention_heads=3)
    with pytest.raises(ConfigError, match=f"{cls.__name__}.rms_norm_eps"):
        cls(rms_norm_eps=0.0)
    assert cls.from_dict({**saved, "eos_token_id": [2, 3]}).eos_token_id == 2
