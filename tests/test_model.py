"""HookedMONET against an independent naive reference, checkpoints, hooks and generation."""

from __future__ import annotations

import json
import os

import pytest
import torch

from monet_interp import CheckpointError, ConfigError, HookedMONET, MonetConfig, released_presets
from naive_monet import naive_logits, random_hf_state, tiny_config_dict
from conftest import write_released_folder


# ---------------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("decompose", ["vertical", "horizontal"])
@pytest.mark.parametrize("groups,layers,kv_heads", [(1, 2, 4), (4, 5, 2)])
def test_logits_match_naive_reference(released_folder, decompose, groups, layers, kv_heads):
    folder, cfg, state = released_folder(moe_decompose=decompose, moe_groups=groups, num_hidden_layers=layers,
                                         num_key_value_heads=kv_heads)
    model = HookedMONET.from_pretrained(folder)
    tokens = torch.randint(0, cfg["vocab_size"], (2, 7), generator=torch.Generator().manual_seed(1))
    ours = model(tokens)
    reference = naive_logits(state, cfg, tokens)
    assert ours.dtype == torch.float32
    assert (ours.double() - reference).abs().max().item() <= 1e-5 * max(1.0, reference.abs().max().item() / 10)
    # routing is not trivial in this fixture: several experts kept per head
    _, cache = model.run_with_cache(tokens, names_filter="blocks.0.moe.hook_g_row")
    kept = (cache["blocks.0.moe.hook_g_row"] > 0).sum(-1).float().mean()
    assert kept > 1.5


def test_tied_embeddings_match_reference(released_folder):
    folder, cfg, state = released_folder(tie_word_embeddings=True, num_hidden_layers=2)
    model = HookedMONET.from_pretrained(folder)
    tokens = torch.randint(0, cfg["vocab_size"], (1, 5))
    assert (model(tokens).double() - naive_logits(state, cfg, tokens)).abs().max() < 1e-4
    assert model.unembed.matrix is model.embed.W_E


def test_save_load_round_trip_is_exact(released_folder, tmp_path):
    folder, cfg, _ = released_folder(moe_decompose="horizontal")
    model = HookedMONET.from_pretrained(folder)
    model.save_pretrained(tmp_path / "saved")
    again = HookedMONET.from_pretrained(tmp_path / "saved")
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    tokens = torch.randint(0, cfg["vocab_size"], (2, 6))
    assert torch.equal(model(tokens), again(tokens))
    # the saved folder uses the official key names, no more, no fewer
    from safetensors.torch import load_file
    saved = load_file(str(tmp_path / "saved" / "model.safetensors"))
    assert set(saved) == set(random_hf_state(cfg))
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["model_type"] == "monet"


def test_sharded_and_pickle_checkpoints_load(released_folder, tmp_path):
    from safetensors.torch import save_file

    folder, cfg, state = released_folder()
    tokens = torch.randint(0, cfg["vocab_size"], (1, 5))
    expected = HookedMONET.from_pretrained(folder)(tokens)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text(json.dumps(cfg))
    keys = sorted(state)
    weight_map = {}
    for n, part in enumerate([keys[: len(keys) // 2], keys[len(keys) // 2:]]):
        name = f"model-0000{n + 1}-of-00002.safetensors"
        save_file({k: state[k] for k in part}, str(sharded / name))
        weight_map.update({k: name for k in part})
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert torch.equal(HookedMONET.from_pretrained(sharded)(tokens), expected)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps(cfg))
    torch.save(state, pickled / "pytorch_model.bin")
    assert torch.equal(HookedMONET.from_pretrained(pickled)(tokens), expected)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize("problem,message", [
    ("missing", "missing keys: model.layers.1.moe.v11.weight"),
    ("extra", "unexpected keys: model.layers.0.moe.surprise"),
    ("shape", "shape mismatches: model.layers.0.moe.b1"),
    ("corrupt", "not a readable safetensors file"),
    ("bad_config", "moe_dim"),
    ("not_json", "not valid JSON"),
    ("pickle", "refused to load"),
    ("no_weights", "has no model.safetensors"),
])
def test_bad_checkpoints_fail_clearly(tmp_path, problem, message):
    cfg = tiny_config_dict()
    state = random_hf_state(cfg)
    folder = tmp_path / problem
    if problem == "missing":
        del state["model.layers.1.moe.v11.weight"]
    elif problem == "extra":
        state["model.layers.0.moe.surprise"] = torch.zeros(3)
    elif problem == "shape":
        state["model.layers.0.moe.b1"] = torch.zeros(5, 5)
    elif problem == "bad_config":
        cfg["moe_dim"] = 3  # odd moe_dim for the vertical decomposition
    write_released_folder(folder, cfg, state)
    if problem == "corrupt":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 3])
    elif problem == "not_json":
        (folder / "config.json").write_text("{not json")
    elif problem == "pickle":
        (folder / "model.safetensors").unlink()
        torch.save({"x": _Exploit()}, folder / "pytorch_model.bin")
    elif problem == "no_weights":
        (folder / "model.safetensors").unlink()
    with pytest.raises((CheckpointError, ConfigError), match=message):
        HookedMONET.from_pretrained(folder)


def test_unknown_name_fails_clearly():
    with pytest.raises(CheckpointError, match="no checkpoint named"):
        HookedMONET.from_pretrained("definitely not a model")


@pytest.mark.parametrize("field,value,needle", [
    ("moe_decompose", "diagonal", "unknown decomposition"),
    ("num_attention_heads", 5, "must divide hidden_size"),
    ("num_key_value_heads", 3, "must divide num_attention_heads"),
    ("moe_topk", 99, "moe_topk"),
    ("hidden_act", "gelu", "relu2"),
    ("moe_routing", "magic", "unknown routing"),
])
def test_config_validation_names_the_field(field, value, needle):
    with pytest.raises(ConfigError, match=needle) as info:
        MonetConfig.from_dict(tiny_config_dict(**{field: value}))
    assert field in str(info.value)


def test_config_json_round_trip(tmp_path):
    cfg = MonetConfig.from_dict(tiny_config_dict(custom_field=7))
    cfg.to_json_file(tmp_path / "c.json")
    again = MonetConfig.from_json_file(tmp_path / "c.json")
    assert again == cfg and again.extra["custom_field"] == 7


@pytest.mark.parametrize("name,count", [
    ("MonetLLM/monet-vd-850M-100BT-hf", 853.5e6), ("MonetLLM/monet-hd-850M-100BT-hf", 853.5e6),
    ("MonetLLM/monet-vd-1.4B-100BT-hf", 1465.2e6), ("MonetLLM/monet-hd-1.4B-100BT-hf", 1465.2e6),
    ("MonetLLM/monet-vd-4.1B-100BT-hf", 4173.4e6), ("MonetLLM/monet-hd-4.1B-100BT-hf", 4173.4e6),
    ("MonetLLM/codemonet-vd-1.4B-100BT-hf", 1465.2e6),
])
def test_release_presets_parameter_counts(name, count):
    cfg = released_presets()[name]
    with torch.device("meta"):
        model = HookedMONET(cfg, device="meta")
    n_params = sum(p.numel() for p in model.parameters())
    assert abs(n_params - count) / count < 1e-3
    assert n_params == cfg.num_parameters()


# ---------------------------------------------------------------------------- inputs
def test_bad_inputs_fail_clearly(released_folder):
    folder, cfg, _ = released_folder()
    model = HookedMONET.from_pretrained(folder)
    with pytest.raises(ValueError, match="out of range"):
        model(torch.tensor([[1, cfg["vocab_size"]]]))
    with pytest.raises(ValueError, match="out of range"):
        model(torch.tensor([[-1, 3]]))
    with pytest.raises(ValueError, match="exceeds max_position_embeddings"):
        model(torch.zeros(1, cfg["max_position_embeddings"] + 1, dtype=torch.long))
    with pytest.raises(TypeError, match="integer tensor"):
        model(torch.zeros(1, 3))


def test_train_mode_does_not_change_routing(released_folder):
    folder, cfg, _ = released_folder()
    model = HookedMONET.from_pretrained(folder)
    tokens = torch.randint(0, cfg["vocab_size"], (2, 6))
    before = model(tokens)
    stats = model.blocks[0].moe.router.norm1.running_mean.clone()
    model.train()
    assert torch.equal(model(tokens), before)
    assert torch.equal(model.blocks[0].moe.router.norm1.running_mean, stats)
    model.set_router_batch_stats(True)
    model(tokens)
    assert not torch.equal(model.blocks[0].moe.router.norm1.running_mean, stats)


def test_left_padding_matches_unpadded(released_folder):
    folder, cfg, _ = released_folder()
    model = HookedMONET.from_pretrained(folder)
    tokens = torch.randint(3, cfg["vocab_size"], (1, 6))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), tokens], dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    assert torch.allclose(model(padded, attention_mask=mask)[:, 3:], model(tokens), atol=1e-5)


def test_loss_matches_manual_cross_entropy(released_folder):
    folder, cfg, _ = released_folder()
    model = HookedMONET.from_pretrained(folder)
    tokens = torch.randint(0, cfg["vocab_size"], (2, 6))
    logits, loss = model(tokens, return_type="both")
    manual = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, cfg["vocab_size"]), tokens[:, 1:].reshape(-1))
    assert torch.allclose(loss, manual, atol=1e-6)
    per_token = model(tokens, return_type="loss", loss_per_token=True)
    assert per_token.shape == (2, 5) and torch.allclose(per_token.mean(), manual, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_dtypes_run(released_folder, dtype):
    folder, cfg, state = released_folder()
    model = HookedMONET.from_pretrained(folder, dtype=dtype)
    tokens = torch.randint(0, cfg["vocab_size"], (1, 5))
    logits = model(tokens)
    assert logits.dtype == dtype
    reference = naive_logits(state, cfg, tokens)
    tolerance = 1e-9 if dtype == torch.float64 else 0.5
    assert (logits.double() - reference).abs().max() < tolerance * max(1.0, reference.abs().max().item() / 10)
