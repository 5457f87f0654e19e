"""The checkout's ``kernels/`` folder must not shadow an installed top-level ``kernels`` package.

``transformers`` >= 5.25 depends on Hugging Face's ``kernels`` and imports it; from the
checkout's root (``python -m pytest``, a notebook started there) our folder comes first on
``sys.path``. These tests run Python from the root in a subprocess, as a user would.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_from_root(code: str, extra_path: Path | None = None) -> str:
    env = {"PATH": "/usr/bin:/bin"}
    if extra_path is not None:
        env["PYTHONPATH"] = str(extra_path)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_installed_kernels_package_wins_over_the_checkout_folder(tmp_path: Path) -> None:
    installed = tmp_path / "site" / "kernels"
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("WHO = 'installed'\n")
    (installed / "layer.py").write_text("NAME = 'installed layer'\n")
    out = run_from_root(
        "import kernels, kernels.layer\n"
        "import monet_interp.kernels as ours\n"
        "print(kernels.WHO, kernels.layer.NAME, sep='|')\n"
        "print(ours.__name__, callable(ours.masked_mix_ref), sep='|')\n",
        extra_path=tmp_path / "site")
    first, second = out.splitlines()
    assert first == "installed|installed layer"
    assert second == "monet_interp.kernels|True"


def test_transformer_lens_imports_from_the_checkout_root() -> None:
    # The CI failure this guards: transformers' hub_kernels did `from kernels import ...` and got
    # this folder.
    out = run_from_root("import transformer_lens, monet_interp.kernels as k\n"
                        "print(k.masked_mix_ref.__module__)\n")
    assert out.strip() == "monet_interp.kernels.reference"
