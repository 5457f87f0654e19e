"""Saved statistics: ``arrays.npz`` + ``metadata.json`` (with the arrays' sha256), and the
checks that statistics are loaded for the model and corpus they were computed with."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from monet_interp.stats.fingerprint import corpus_fingerprint, model_description
from monet_interp.stats.stream import StatsError

FORMAT_VERSION = 1
ARRAYS_NAME = "arrays.npz"
META_NAME = "metadata.json"


class StatsMetadataError(StatsError):
    """Saved statistics do not match the model/corpus they are loaded for, or are damaged."""



def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def save_arrays(folder: str | Path, kind: str, arrays: dict[str, np.ndarray | None], meta: dict[str, Any]) -> Path:
    """Write ``arrays.npz`` then ``metadata.json`` (with the npz's sha256) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    present = {k: v for k, v in arrays.items() if v is not None}
    tmp = folder / (ARRAYS_NAME + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **present)
    tmp.replace(folder / ARRAYS_NAME)
    meta = dict(meta, kind=kind, format_version=FORMAT_VERSION,
                arrays_sha256=hashlib.sha256((folder / ARRAYS_NAME).read_bytes()).hexdigest(),
                arrays={k: [list(v.shape), str(v.dtype)] for k, v in present.items()})
    (folder / (META_NAME + ".tmp")).write_text(json.dumps(meta, indent=1, default=_json_default) + "\n")
    (folder / (META_NAME + ".tmp")).replace(folder / META_NAME)
    return folder


def load_arrays(folder: str | Path, kind: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    folder = Path(folder)
    if not (folder / META_NAME).is_file() or not (folder / ARRAYS_NAME).is_file():
        raise StatsMetadataError(f"{folder} has no {META_NAME} + {ARRAYS_NAME}: not saved statistics")
    meta = json.loads((folder / META_NAME).read_text())
    if meta.get("kind") != kind:
        raise StatsMetadataError(f"{folder} holds {meta.get('kind')!r} statistics, expected {kind!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise StatsMetadataError(f"{folder}: format_version {meta.get('format_version')}, expected {FORMAT_VERSION}")
    digest = hashlib.sha256((folder / ARRAYS_NAME).read_bytes()).hexdigest()
    if digest != meta.get("arrays_sha256"):
        raise StatsMetadataError(f"{folder / ARRAYS_NAME} does not match the sha256 in {META_NAME} (damaged?)")
    with np.load(folder / ARRAYS_NAME, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    for name, (shape, dtype) in meta.get("arrays", {}).items():
        if name not in arrays or list(arrays[name].shape) != shape:
            raise StatsMetadataError(f"{folder}: array {name!r} missing or of the wrong shape")
    return arrays, meta


def check_metadata(meta: dict[str, Any], model: Any = None, corpus: Any = None, where: str = "") -> None:
    """Raise StatsMetadataError if ``model``/``corpus`` are not the ones the statistics were made
    with (model: config and router fingerprint; corpus: manifest sha256)."""
    if model is not None:
        want = model_description(model)
        have = meta.get("model", {})
        if have.get("config") != want["config"]:
            raise StatsMetadataError(f"{where}: statistics were computed for a model with a different config")
        if have.get("fingerprint") != want["fingerprint"]:
            raise StatsMetadataError(f"{where}: statistics were computed with different model weights "
                                     f"(router fingerprint {str(have.get('fingerprint'))[:12]} != {want['fingerprint'][:12]})")
    if corpus is not None:
        have_hash = meta.get("corpus", {}).get("fingerprint")
        path = getattr(corpus, "path", None)
        want_hash = corpus_fingerprint(corpus) if path is not None or isinstance(getattr(corpus, "manifest", None), dict) else None
        if want_hash is not None and have_hash != want_hash:
            raise StatsMetadataError(f"{where}: statistics were computed on a different corpus "
                                     f"(manifest sha256 {str(have_hash)[:12]} != {want_hash[:12]})")
        missing = [lab for lab in meta.get("labels", []) if lab not in list(corpus.labels)]
        if missing:
            raise StatsMetadataError(f"{where}: labels {missing} are not in this corpus")


class SavedStats:
    """Label lookup, save and load of a statistics dataclass: ``_KIND`` names the kind in the
    metadata, ``_ARRAYS`` the numpy fields (arrays.npz), ``_SCALARS`` the fields kept in
    metadata.json beside the ``metadata`` dict."""

    _KIND: ClassVar[str] = ""
    _ARRAYS: ClassVar[tuple[str, ...]] = ()
    _SCALARS: ClassVar[tuple[str, ...]] = ()
    labels: list[str]
    metadata: dict[str, Any]

    def label_index(self, label: str | int) -> int:
        if isinstance(label, (int, np.integer)):
            return int(label)
        try:
            return self.labels.index(label)
        except ValueError:
            raise KeyError(f"label {label!r} not in statistics; labels: {self.labels}") from None

    def save(self, folder: str | Path) -> Path:
        """Write arrays.npz + metadata.json (model, corpus fingerprint, settings) into ``folder``."""
        meta = dict(self.metadata)
        meta.update({k: getattr(self, k) for k in self._SCALARS})
        return save_arrays(folder, self._KIND, {k: getattr(self, k) for k in self._ARRAYS}, meta)

    @classmethod
    def load(cls, folder: str | Path, *, model: Any = None, corpus: Any = None) -> Any:
        """Read statistics saved by :meth:`save`. Checks the file hash; with ``model`` and/or
        ``corpus`` also checks that they are the ones the statistics were computed with."""
        arrays, meta = load_arrays(folder, cls._KIND)
        check_metadata(meta, model, corpus, str(folder))
        scalars = {k: meta.get(k) for k in cls._SCALARS}
        metadata = {k: v for k, v in meta.items() if k not in cls._SCALARS}
        return cls(**scalars, **{k: arrays.get(k) for k in cls._ARRAYS}, metadata=metadata)

