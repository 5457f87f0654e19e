"""SAEs on HookedMONET through SAELens' own training runner (LanguageModelSAETrainingRunner with
override_model, offline): trained on the residual stream and on a MONET expert-activation hook,
saved by SAELens and loaded back, checked against a TopK SAE written out from its weights, then
spliced into HookedMONET (reconstruction, and error term kept: unchanged bit for bit without an
edit, changed by exactly -f_k W_dec[k] when feature k is removed)."""

from __future__ import annotations

import functools
import json

import pytest
import torch

from monet_interp import HookedMONET
from monet_interp.analyses.baselines import hook_width, train_sae_with_runner
from monet_interp.units import splice_sae

WINDOWS = torch.randint(3, 4096, (24, 33), generator=torch.Generator().manual_seed(0))
TOKENS = WINDOWS[:2, :12]


@functools.lru_cache(maxsize=None)
def vd() -> HookedMONET:
    return HookedMONET.from_pretrained("monet-vd-tiny")


def reference_topk(sae, x: torch.Tensor) -> torch.Tensor:
    """TopK SAE encoder from its weights: the k largest of (x - b_dec) W_enc + b_enc, relu'd."""
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    top = pre.topk(sae.cfg.k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))


def flat_acts(model: HookedMONET, hook: str, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[hook])
    act = cache[hook]
    return act.flatten(2) if act.dim() > 3 else act


@pytest.mark.parametrize("hook,width", [("blocks.1.hook_resid_post", 192),
                                        ("blocks.2.moe.hook_expert_acts_row", 64 * 8 // 2)])
def test_runner_trains_on_hookedmonet_saves_loads_and_splices(hook, width, tmp_path):
    from sae_lens import SAE

    model = vd()
    assert hook_width(model, hook) == width
    out = tmp_path / "sae"
    sae = train_sae_with_runner(model, hook, WINDOWS, expansion=2, k=8, steps=6, batch_size=128, output_path=out)
    # SAELens wrote its usual files; the runner config names our model, hook and token budget
    assert {"cfg.json", "sae_weights.safetensors", "runner_cfg.json"} <= {p.name for p in out.iterdir()}
    runner_cfg = json.loads((out / "runner_cfg.json").read_text())
    assert runner_cfg["hook_name"] == hook and runner_cfg["model_class_name"] == "HookedMONET"
    assert runner_cfg["training_tokens"] == 6 * 128 and runner_cfg["logger"]["log_to_wandb"] is False
    assert type(sae).__name__ == "TopKSAE" and sae.cfg.metadata.hook_name == hook
    assert sae.W_dec.shape == (2 * width, width) and sae.cfg.normalize_activations == "none"  # scale folded
    again = SAE.load_from_disk(str(out), device="cpu")
    assert torch.equal(again.W_enc, sae.W_enc) and torch.equal(again.b_dec, sae.b_dec)

    x = flat_acts(model, hook, TOKENS)
    with torch.no_grad():
        f = sae.encode(x)
        assert torch.allclose(f, reference_topk(sae, x), atol=1e-5)
        assert ((f > 0).sum(-1) <= 8).all()
        recon = f @ sae.W_dec + sae.b_dec
        clean = model(TOKENS)

        def by_hand(act, hook):  # the reconstruction written out from the weights
            flat = act.flatten(2) if act.dim() > 3 else act
            return (reference_topk(sae, flat) @ sae.W_dec + sae.b_dec).reshape(act.shape)

        want = model.run_with_hooks(TOKENS, fwd_hooks=[(hook, by_hand)])
        with splice_sae(model, sae, hook):
            spliced = model(TOKENS)
            _, cache = model.run_with_cache(TOKENS, names_filter=[hook])  # caching runs after the splice
        assert torch.allclose(spliced, want, atol=1e-4) and not torch.allclose(spliced, clean, atol=1e-3)
        assert torch.allclose(cache[hook].reshape(x.shape), recon, atol=1e-5)
        with splice_sae(model, sae, hook, error_term=True):
            assert torch.equal(model(TOKENS), clean)  # error term kept, nothing edited: bit for bit
        feature = int((f > 0).sum((0, 1)).argmax())  # the most often active feature

        def drop(feats: torch.Tensor) -> torch.Tensor:
            return feats.index_fill(-1, torch.tensor([feature]), 0.0)

        with splice_sae(model, sae, hook, error_term=True, edit=drop):
            edited = model(TOKENS)
            _, cache = model.run_with_cache(TOKENS, names_filter=[hook])
        delta = cache[hook].reshape(x.shape) - x
        assert torch.allclose(delta, -f[..., feature, None] * sae.W_dec[feature], atol=1e-4)
        assert (edited - clean).abs().max() > 0
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())
    with pytest.raises(ValueError, match="no hook"):
        train_sae_with_runner(model, "blocks.9.hook_resid_post", WINDOWS)
    with pytest.raises(ValueError, match="windows"):
        train_sae_with_runner(model, hook, WINDOWS[0])
