"""One way to open a corpus from whatever a caller was given.

    from monet_interp.data import open_corpus
    corpus = open_corpus("data/corpus")                        # a built corpus folder (manifest.json)
    corpus = open_corpus("texts/", model=model)                # or a plain-text folder <label>/*.txt
    corpus = open_corpus({"python": ["def f(): ..."]}, model=model)   # {label: [text]}
    corpus = open_corpus(corpus)                               # an open corpus object: returned as is
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from monet_interp.data.corpus import MANIFEST_NAME, Corpus, build_corpus
from monet_interp.data.memory import CorpusSpecError, is_text_folder, text_corpus, text_folder_corpus


def open_corpus(spec: Any, model: Any = None, *, verify: bool = True, build_missing: bool = False,
                progress: bool = True, log: Callable[[str], None] = print) -> Any:
    """A corpus (``monet_interp.stats.CorpusLike``) from ``spec``:

    - an already open corpus object (a :class:`Corpus`, :class:`MemoryCorpus`, any stand-in):
      returned unchanged;
    - a ``{label: [text, ...]}`` mapping: tokenised with ``model``'s tokenizer (a MemoryCorpus);
    - a path (str or PathLike) to a built corpus folder: ``Corpus.load(path, verify=verify)``
      (``verify``: also check every file's sha256). With ``build_missing``, a folder without
      manifest.json is first built there (``build_corpus``, announced through ``log``).
      Without ``model``, the errors are Corpus.load's (CorpusError: no manifest.json ...).
    - with ``model``, a path may also be a plain-text folder (``<label>/*.txt``, one document per
      file); a missing folder raises FileNotFoundError, a folder that is neither kind a
      CorpusSpecError.
    """
    if isinstance(spec, Mapping):
        if model is None:
            raise CorpusSpecError("a {label: [text]} corpus needs a model (its tokenizer encodes the texts)")
        return text_corpus(model, spec)
    if not isinstance(spec, (str, os.PathLike)):
        return spec
    root = Path(spec)
    if build_missing and not (root / MANIFEST_NAME).is_file():
        log(f"no corpus at {root}: building it (monet-interp corpus build --out {root})")
        build_corpus(root, progress=progress)
    if model is None:
        return Corpus.load(root, verify=verify)
    if not root.is_dir():
        raise FileNotFoundError(f"corpus folder {root} does not exist")
    if (root / MANIFEST_NAME).is_file():
        return Corpus.load(root, verify=verify)
    if is_text_folder(root):
        return text_folder_corpus(model, root)
    raise CorpusSpecError(f"{root} is neither a built corpus (no manifest.json; build one with `monet-interp corpus "
                          f"build`) nor a plain-text corpus (<label>/*.txt)")


__all__ = ["open_corpus"]
