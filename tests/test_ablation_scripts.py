"""The hook-based ablation scripts in scripts/ablations/ run on the embedded default model, and the
numbers they print agree with an independent route to the same ablation:

- zeroing one head's row factors g1[h, :] (the script) removes the same contribution as zeroing its
  column factors g2[h, :] (the head's weights g1*g2 vanish either way);
- pruning every expert (i0, j), j = 0..E-1, of a routing group from a JSON file (the edit path)
  equals zeroing g1[:, i0] with hooks at every layer of that group;
- patching routing factors reports KL values that match torch's own KL, and 0 when the source is
  the target.
"""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import pytest
import torch

from monet_interp import ExpertEdit, HookedMONET
from monet_interp.editing import EditSet

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts" / "ablations"
NUMBER = r"([-+]?\d+\.\d+)"


@pytest.fixture(scope="module")
def model() -> HookedMONET:
    return HookedMONET.from_pretrained("monet-vd-tiny")


def run_script(name: str, argv: list[str], capsys) -> str:
    old = sys.argv
    sys.argv = [str(SCRIPTS / name), *argv]
    try:
        runpy.run_path(str(SCRIPTS / name), run_name="__main__")
    finally:
        sys.argv = old
    return capsys.readouterr().out


def zero_hook(index: tuple):
    def hook(g: torch.Tensor, hook) -> torch.Tensor:
        g = g.clone()
        g[index] = 0.0
        return g
    return hook


def test_zero_ablate_routing_head_matches_zeroing_the_column_factors(model, capsys):
    text = "import os\n\ndef main(args):\n    return len(args)\n"
    out = run_script("zero_ablate_routing_head.py", ["--layer", "1", "--head", "2", "--text", text], capsys)
    clean, ablated = map(float, re.search(rf"loss clean {NUMBER} nats, .* zeroed {NUMBER}", out).groups())
    tokens = model.to_tokens(text)
    with torch.no_grad():
        ref_clean = model(tokens, return_type="loss").item()
        by_columns = model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[
            ("blocks.1.moe.hook_g_col", zero_hook((slice(None), slice(None), 2)))]).item()
    assert clean == pytest.approx(ref_clean, abs=1e-4)
    assert ablated == pytest.approx(by_columns, abs=1e-4)
    assert abs(ablated - clean) > 1e-3  # the head mattered, so the comparison is not vacuous


def test_zero_ablate_rejects_a_head_out_of_range(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_script("zero_ablate_routing_head.py", ["--head", "99"], capsys)
    assert exit_info.value.code == 2 and "--head" in capsys.readouterr().err


def test_prune_from_json_equals_zeroing_a_row_factor_with_hooks(model, tmp_path, capsys):
    text = "sub add {\n    my ($a, $b) = @_;\n    return $a + $b;\n}\n"
    tokens = model.to_tokens(text)
    group, layers = 0, model.cfg.layers_of_group(0)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=f"blocks.{layers[0]}.moe.hook_g_row")
    i0 = int(cache[f"blocks.{layers[0]}.moe.hook_g_row"].sum((0, 1, 2)).argmax())  # the most used row
    E = model.cfg.moe_experts
    EditSet([ExpertEdit(i0, j, "prune", group=group) for j in range(E)]).to_json(tmp_path / "edits.json")
    out = run_script("prune_experts_from_json.py", [str(tmp_path / "edits.json"), "--text", text,
                                                    "--new-tokens", "4"], capsys)
    n, clean, edited = re.search(rf"(\d+) edits; loss {NUMBER} -> {NUMBER} nats", out).groups()
    assert int(n) == E
    with torch.no_grad():
        ref = model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[
            (f"blocks.{l}.moe.hook_g_row", zero_hook((slice(None), slice(None), slice(None), i0))) for l in layers])
    assert float(edited) == pytest.approx(ref.item(), abs=1e-4)
    assert abs(float(edited) - float(clean)) > 1e-3
    assert "before:" in out and "after:" in out


def test_patch_routing_factors_reports_torch_kl(model, capsys):
    source, target = "x = 1 +", "my $x = 1 +"
    out = run_script("patch_routing_factors.py", ["--layer", "1", "--source", source, "--target", target], capsys)
    kl_target, kl_patched = (float(v) for v in re.findall(rf"= {NUMBER}", out)[:2])
    with torch.no_grad():
        p = model(model.to_tokens(source))[0, -1].log_softmax(-1)
        q = model(model.to_tokens(target))[0, -1].log_softmax(-1)
    ref = torch.nn.functional.kl_div(q, p, log_target=True, reduction="sum").item()  # KL(p || q)
    assert kl_target == pytest.approx(ref, abs=1e-3) and kl_target > 0
    assert kl_patched >= 0 and kl_patched != pytest.approx(kl_target, abs=1e-6)  # the patch moved something
    same = run_script("patch_routing_factors.py", ["--layer", "0", "--source", source, "--target", source], capsys)
    assert [float(v) for v in re.findall(rf"= {NUMBER}", same)[:2]] == [0.0, 0.0]
