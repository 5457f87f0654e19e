"""Routing statistics at scale: ``torchrun --nproc_per_node=2 -m monet_interp.stats.distributed``
(two CPU processes, gloo) over a small corpus built from a fake source tree gives the same
statistics as one process, array for array, bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fake_sources import make_tree
from monet_interp import HookedMONET
from monet_interp.stats import RoutingStats, compute_routing_stats

TORCHRUN = Path(sys.executable).with_name("torchrun")
ARGS = dict(split="val", max_tokens_per_label=160, seq_len=16, batch_size=1, top_k=4, fire_threshold=0.01,
            doc_max=True)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from monet_interp.data.corpus import build_corpus

    root = tmp_path_factory.mktemp("torchrun")
    make_tree(root / "tree")
    build_corpus(root / "corpus", labels=["python", "c", "news_sport"], sources_root=root / "tree",
                 val_fraction=0.25, test_fraction=0.25, progress=False)
    return root / "corpus"


@pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun is not installed next to this interpreter")
def test_torchrun_two_processes_equal_one_process(corpus_dir, tmp_path):
    from monet_interp.data import Corpus

    out = tmp_path / "stats"
    cmd = [str(TORCHRUN), "--standalone", "--nnodes=1", "--nproc_per_node=2", "-m", "monet_interp.stats.distributed",
           "--model", "monet-vd-tiny", "--corpus", str(corpus_dir), "--out", str(out), "--split", ARGS["split"],
           "--max-tokens-per-label", str(ARGS["max_tokens_per_label"]), "--seq-len", str(ARGS["seq_len"]),
           "--batch-size", str(ARGS["batch_size"]), "--top-k", str(ARGS["top_k"]),
           "--fire-threshold", str(ARGS["fire_threshold"]), "--doc-max"]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "saved routing statistics" in done.stdout
    model = HookedMONET.from_pretrained("monet-vd-tiny")
    corpus = Corpus.load(corpus_dir)
    dist = RoutingStats.load(out, model=model, corpus=corpus)
    single = compute_routing_stats(model, corpus, progress=False, **ARGS)
    assert dist.metadata["settings"]["world_size"] == 2 and single.metadata["settings"]["world_size"] == 1
    assert dist.labels == single.labels and dist.total_tokens == single.total_tokens > 0
    for name in RoutingStats._ARRAYS:
        a, b = getattr(dist, name), getattr(single, name)
        if a is None or b is None:
            assert a is None and b is None, name
            continue
        np.testing.assert_array_equal(a, b, err_msg=name)
