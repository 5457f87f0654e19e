"""Fingerprints that identify a model (its routers' weights) and a corpus (its manifest, or its
tokens), recorded with saved statistics and checked when they are loaded."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from monet_interp.stats.stream import WindowPlan


def corpus_fingerprint(corpus: Any, plan: WindowPlan | None = None) -> str:
    """sha256 identifying a corpus: of manifest.json when there is one (a built Corpus), else of
    the planned documents' tokens (a stand-in corpus)."""
    path = getattr(corpus, "path", None)
    if path is not None and (Path(path) / "manifest.json").is_file():
        return hashlib.sha256((Path(path) / "manifest.json").read_bytes()).hexdigest()
    manifest = getattr(corpus, "manifest", None)
    if isinstance(manifest, dict):
        return hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()
    h = hashlib.sha256()
    if plan is not None:
        for lab in plan.labels:
            h.update(lab.encode() + b"\0")
        for doc in plan.docs:
            h.update(np.ascontiguousarray(doc, dtype=np.int64).tobytes())
            h.update(b"|")
    return h.hexdigest()


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the routers' weights and running statistics (or, without routers, of the
    embedding): cheap, and different for any two differently trained checkpoints."""
    h = hashlib.sha256()
    items = [(n, t) for n, t in model.state_dict().items() if ".router." in n or ".moe.router" in n]
    if not items:
        items = [(n, t) for n, t in model.state_dict().items() if n.startswith("embed")]
    for name, tensor in sorted(items, key=lambda x: x[0]):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def model_description(model: torch.nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "cfg", None)
    config = cfg.to_dict() if cfg is not None and hasattr(cfg, "to_dict") else {}
    return {
        "class": type(model).__name__,
        "name_or_path": getattr(model, "checkpoint_path", None),
        "config": json.loads(json.dumps(config, default=str)),
        "fingerprint": model_fingerprint(model),
    }


__all__ = ["corpus_fingerprint", "model_description", "model_fingerprint"]
