"""Released-checkpoint compatibility: a folder laid out as the authors' Hugging Face releases
(MonetLLM/*-hf: bf16 safetensors, config with model_type "monet", architectures and auto_map for
their remote code, Llama-2 SentencePiece tokenizer files) loads with HookedMONET.from_pretrained,
weights and logits checked against the file and a hand-written reference; and an offline hub id
fails with one line that says how to get the files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from naive_monet import naive_logits, random_hf_state, tiny_config_dict

from monet_interp import HookedMONET, loading

AUTO_MAP = {"AutoConfig": "configuration_monet.MonetConfig", "AutoModelForCausalLM": "modeling_monet.MonetForCausalLM"}
TEXT = "def main(): return x"


def write_release(folder: Path) -> tuple[dict, dict, object]:
    """Write the release layout; returns (config, bf16 state, the SentencePiece processor)."""
    import sentencepiece as spm
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    corpus = ["def main(): return x", "the cat sat on the mat", "hello world, said the cat"] * 30
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_prefix=str(folder / "tokenizer"),
                                   vocab_size=60, model_type="bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                                   hard_vocab_limit=False, minloglevel=2)
    (folder / "tokenizer.vocab").unlink()
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "legacy": False,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
        "model_max_length": 2048, "clean_up_tokenization_spaces": False}))
    (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                                "unk_token": "<unk>"}))
    cfg = tiny_config_dict(vocab_size=sp.get_piece_size(), pad_token_id=None, tie_word_embeddings=False,
                           torch_dtype="bfloat16", transformers_version="4.44.2", auto_map=AUTO_MAP,
                           architectures=["MonetForCausalLM"], model_type="monet")
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    for name in ("configuration_monet.py", "modeling_monet.py"):  # the authors' remote code (never imported)
        (folder / name).write_text("# remote code of the release; HookedMONET does not execute it\n")
    state = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v)
             for k, v in random_hf_state(cfg, seed=4).items()}
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    return cfg, state, sp


def test_release_layout_loads_with_weights_tokenizer_and_config(tmp_path):
    folder = tmp_path / "monet-vd-tiny-release-hf"
    cfg, state, sp = write_release(folder)
    model = HookedMONET.from_pretrained(folder)
    assert model.dtype == torch.float32 and model.cfg.model_type == "monet"
    assert model.cfg.extra["auto_map"] == AUTO_MAP and model.cfg.extra["torch_dtype"] == "bfloat16"
    hooked, unknown = loading.hf_to_hooked_state_dict(state)
    assert not unknown
    own = model.state_dict()
    for key, value in hooked.items():  # every tensor is the file's bf16 value, widened exactly
        assert torch.equal(own[key], value.to(own[key].dtype)), key
    # the Llama SentencePiece tokenizer: <s> = 1 first, then SentencePiece's own pieces
    assert model.tokenizer.kind == "transformers" and model.tokenizer.bos_token_id == 1
    tokens = model.to_tokens(TEXT)
    assert tokens[0].tolist() == [1, *sp.encode(TEXT)]
    assert model.to_string(tokens[0, 1:]) == TEXT
    with torch.no_grad():
        logits = model(tokens)
    want = naive_logits({k: v.double() if v.is_floating_point() else v for k, v in state.items()}, cfg, tokens)
    assert (logits.double() - want).abs().max() < 1e-3 * max(1.0, want.abs().max().item())
    bf16 = HookedMONET.from_pretrained(folder, dtype=torch.bfloat16)
    assert torch.equal(bf16.state_dict()["blocks.0.moe.u1.weight"], hooked["blocks.0.moe.u1.weight"])
    # saving keeps the release's config keys (auto_map, ...) for the authors' loader
    model.save_pretrained(tmp_path / "copy", save_tokenizer=False)
    saved = json.loads((tmp_path / "copy" / "config.json").read_text())
    assert saved["auto_map"] == AUTO_MAP and saved["model_type"] == "monet"


def test_offline_hub_id_gives_one_line_how_to(tmp_path):
    code = ("from monet_interp import HookedMONET\n"
            "HookedMONET.from_pretrained('MonetLLM/monet-vd-1.4B-100BT-hf')\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("monet_interp.loading.CheckpointError: could not fetch 'MonetLLM/monet-vd-1.4B-100BT-hf'")
    assert "huggingface-cli download MonetLLM/monet-vd-1.4B-100BT-hf --local-dir FOLDER" in last
    assert "monet_interp.load_model('FOLDER')" in last
    message = loading.hub_error_message("MonetLLM/x", OSError("no\nnetwork\n"))  # one line
    assert "\n" not in message and "(OSError: no network)" in message
