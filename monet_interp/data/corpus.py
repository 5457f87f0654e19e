"""Build a labelled, tokenised, split corpus from offline sources, and read it back.

Layout of a corpus directory::

    manifest.json                      written last; lists every file with its sha256 and size
    tokenizer.json                     the tokenizer the shards were encoded with
    shards/<label>/<split>.tokens.npy  1-D token ids (uint16 below 65,536 tokens), documents
                                       concatenated, each as [bos, ..., eos]
    shards/<label>/<split>.offsets.npy int64 document boundaries into tokens (n_docs + 1)
    shards/<label>/<split>.docs.jsonl  one {"key", "sha256", "text"} line per document

Every file is written under a temporary name and renamed; the previous manifest is removed
before anything else is touched and the new one is written last, so an interrupted build leaves a
directory that :meth:`Corpus.load` refuses. A document's split is a function of the sha256 of
its cleaned text only (see :func:`split_of`).
"""

import hashlib
import io
import json
import os
import platform
import random
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Int, Integer
from tokenizers import Tokenizer
from monet_interp.progress import progress_bar

from monet_interp.data import sources as S
from monet_interp.data import tokenizer_training as T

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
MANIFEST_NAME = "manifest.json"
TOKENIZER_NAME = "tokenizer.json"
BUILD_MARKER = ".monet-corpus"
DEFAULT_MAX_BYTES_PER_LABEL = 4_000_000
DEFAULT_VAL_FRACTION = 0.05
DEFAULT_TEST_FRACTION = 0.05
DEFAULT_OUT_DIR = "data/corpus"
MAX_OVERSIZE_SKIPS = 64  # stop filling a label after this many documents that would overshoot its cap

Manifest = dict[str, Any]


class CorpusError(Exception):
    """A corpus directory is missing, incomplete or corrupted, or a build cannot proceed."""


class CorpusEmptyError(CorpusError, ValueError):
    """No source produced any document for any requested label."""


class CorpusIntegrityError(CorpusError):
    """A file listed in the manifest is missing or does not match its recorded hash/size."""


def split_of(sha256_hex: str, val_fraction: float = DEFAULT_VAL_FRACTION,
             test_fraction: float = DEFAULT_TEST_FRACTION) -> str:
    """The split of a document whose cleaned text has this sha256 (independent of everything else)."""
    u = int(sha256_hex[:16], 16) / float(1 << 64)
    if u < val_fraction:
        return "val"
    if u < val_fraction + test_fraction:
        return "test"
    return "train"


@dataclass
class _Doc:
    key: str
    text: str
    sha256: str
    split: str


# --------------------------------------------------------------------------------------------
# collection
# --------------------------------------------------------------------------------------------


def _collect_label(spec: S.LabelSpec, ctx: S.SourceContext, *, max_bytes: int, seed: int,
                   val_fraction: float, test_fraction: float
                   ) -> tuple[list[_Doc], dict[str, Any], list[S.SourceResult], set[str]]:
    results = [src.find(ctx) for src in spec.sources]
    by_key: dict[str, S.Candidate] = {}
    for r in results:
        for c in r.candidates:
            by_key.setdefault(c.key, c)
    keys = sorted(by_key)
    random.Random(f"{seed}:{spec.name}").shuffle(keys)
    rejected: Counter[str] = Counter()
    seen: set[str] = set()
    docs: list[_Doc] = []
    total = 0
    oversize = 0
    read = 0
    used_paths: set[str] = set()
    for key in keys:
        if total >= max_bytes - S.MIN_DOC_BYTES or oversize >= MAX_OVERSIZE_SKIPS:
            break
        cand = by_key[key]
        read += 1
        try:
            raws = cand.load()
        except S.Reject as e:
            rejected[e.reason] += 1
            continue
        except (OSError, EOFError, ValueError, RuntimeError) as e:  # unreadable archive member etc.
            rejected[f"read_error:{type(e).__name__}"] += 1
            continue
        pieces: list[str] = []
        for raw in raws:
            try:
                pieces += S.clean_document(raw, spec.kind, spec.comment_styles)
            except S.Reject as e:
                rejected[e.reason] += 1
        for i, text in enumerate(pieces):
            h = S.sha256_text(text)
            if h in seen:
                rejected["duplicate"] += 1
                continue
            n = len(text.encode("utf-8"))
            if total + n > max_bytes:
                oversize += 1
                continue
            seen.add(h)
            total += n
            docs.append(_Doc(key if len(pieces) == 1 else f"{key}#{i:03d}", text, h,
                             split_of(h, val_fraction, test_fraction)))
            if cand.path is not None:
                used_paths.add(cand.path)
    docs.sort(key=lambda d: d.key)
    report = {
        "candidates": len(keys),
        "candidates_read": read,
        "rejected": dict(sorted(rejected.items())),
        "skipped_over_cap": oversize,
        "bytes": total,
        "docs": len(docs),
        "capped": total >= max_bytes - S.MIN_DOC_BYTES or oversize >= MAX_OVERSIZE_SKIPS,
    }
    return docs, report, results, used_paths


def _source_reports(results: Sequence[S.SourceResult]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    found, missing = [], []
    for r in results:
        if r.candidates:
            found.append({"name": r.name, "locations": r.found, "candidates": len(r.candidates),
                          **({"notes": r.notes} if r.notes else {})})
        else:
            missing.append({"name": r.name, "searched": r.searched, **({"notes": r.notes} if r.notes else {})})
    return found, missing


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def _write_bytes_atomic(path: Path, data: bytes, fsync: bool = False) -> dict[str, Any]:
    """Write ``data`` to ``path`` via a temporary file + rename; returns {sha256, bytes}.
    (Shards are not fsynced: after a power loss their sizes/hashes no longer match the manifest,
    which :meth:`Corpus.load` detects; the manifest itself is.)"""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _prepare_out_dir(out: Path) -> None:
    if out.exists():
        if not out.is_dir():
            raise CorpusError(f"output path {out} exists and is not a directory")
        entries = [p.name for p in out.iterdir()]
        if entries and not ({MANIFEST_NAME, BUILD_MARKER, "shards"} & set(entries)):
            raise CorpusError(f"refusing to build into {out}: it is not empty and does not look like a corpus "
                              f"directory (no {MANIFEST_NAME} or {BUILD_MARKER})")
    out.mkdir(parents=True, exist_ok=True)
    # invalidate first: from here until the new manifest lands, nothing in `out` loads
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    (out / BUILD_MARKER).write_text("monet-interp corpus directory (build in progress or complete)\n")
    if (out / "shards").exists():
        shutil.rmtree(out / "shards")
    (out / TOKENIZER_NAME).unlink(missing_ok=True)
    for p in out.glob(".*.tmp-*"):
        p.unlink(missing_ok=True)


def _package_versions(results: Sequence[S.SourceResult], ctx: S.SourceContext,
                      deb_packages: Sequence[str]) -> dict[str, Any]:
    archives: dict[str, str] = {}
    installed: dict[str, str] = {}
    for r in results:
        if not r.candidates:
            continue
        for a in r.archives:
            if a not in archives and os.path.isfile(a):
                archives[a] = S.file_sha256(a)
        for dist in r.packages.get("pypi_installed", []):
            try:
                installed[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                installed[dist] = "unknown"
    out: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "tools": {},
        "archives": {ctx.show(k): {"sha256": v} for k, v in sorted(archives.items())},
        "python_packages_read": dict(sorted(installed.items())),
        "debian": S.dpkg_versions(deb_packages) if ctx.system else {},
    }
    for dist in ("tokenizers", "numpy", "torch"):
        try:
            out["tools"][dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


# --------------------------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------------------------


def resolve_labels(labels: Sequence[str] | str | None) -> list[str]:
    """Validate label names (``None`` -> the default set; ``"all"`` -> every known label)."""
    if labels is None:
        return list(S.DEFAULT_LABELS)
    if isinstance(labels, str):
        labels = [x.strip() for x in labels.split(",") if x.strip()]
    if list(labels) == ["all"]:
        return list(S.LABELS)
    out: list[str] = []
    for lab in labels:
        if lab == "code":
            out += [x for x in S.CODE_LABELS if x in S.DEFAULT_LABELS]
        elif lab == "natural":
            out += [x for x in S.NATURAL_LABELS if x in S.DEFAULT_LABELS]
        elif lab in S.LABELS:
            out.append(lab)
        else:
            raise ValueError(f"unknown corpus label {lab!r}; known labels: {', '.join(S.LABELS)} "
                             "(or 'code', 'natural', 'all')")
    wanted = set(out)
    return [x for x in S.LABELS if x in wanted]  # registry order, no duplicates


def build_corpus(
    out_dir: str | os.PathLike[str],
    *,
    labels: Sequence[str] | str | None = None,
    sources_root: str | os.PathLike[str] | None = None,
    tokenizer: str | os.PathLike[str] | Tokenizer | None = None,
    train_tokenizer: bool = False,
    vocab_size: int = T.DEFAULT_VOCAB_SIZE,
    tokenizer_sample_bytes: int = T.DEFAULT_SAMPLE_BYTES,
    save_tokenizer: str | os.PathLike[str] | None = None,
    max_bytes_per_label: int = DEFAULT_MAX_BYTES_PER_LABEL,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 0,
    progress: bool = True,
) -> Manifest:
    """Collect, clean, deduplicate, split, tokenise and write a corpus; returns its manifest.

    ``tokenizer``: a ``tokenizer.json`` path or a loaded ``Tokenizer``; ``None`` uses the committed
    asset (``monet_interp/assets/tokenizer.json``), or trains one when ``train_tokenizer`` is set or
    the asset is absent (on a label-balanced sample of the train split, ``vocab_size`` tokens).
    ``sources_root`` re-roots every system location (tests use a fixture tree). Labels whose
    sources are all missing are skipped and reported; if nothing is found at all,
    :class:`CorpusEmptyError` (a ``ValueError``) names what was searched.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    label_names = resolve_labels(labels)
    if not label_names:
        raise ValueError("no labels requested")
    if max_bytes_per_label < S.MIN_DOC_BYTES:
        raise ValueError(f"max_bytes_per_label must be at least {S.MIN_DOC_BYTES}, got {max_bytes_per_label}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction and test_fraction must be in [0, 1) with sum < 1, got {val_fraction}, {test_fraction}")
    if tokenizer is not None and train_tokenizer:
        raise ValueError("pass either tokenizer= or train_tokenizer=True, not both")
    if sources_root is not None and not Path(sources_root).is_dir():
        raise ValueError(f"sources_root {sources_root} is not a directory")

    ctx = S.SourceContext(sources_root)
    per_label: dict[str, list[_Doc]] = {}
    reports: dict[str, dict[str, Any]] = {}
    missing_labels: dict[str, Any] = {}
    all_results: list[S.SourceResult] = []
    used_paths: dict[str, set[str]] = {}
    try:
        bar = progress_bar(label_names, desc="collect", unit="label", disable=not progress)
        for name in bar:
            bar.set_postfix_str(name)
            spec = S.LABELS[name]
            docs, report, results, used = _collect_label(spec, ctx, max_bytes=max_bytes_per_label, seed=seed,
                                                         val_fraction=val_fraction, test_fraction=test_fraction)
            all_results += results
            used_paths[name] = used
            found, missing = _source_reports(results)
            report = {"kind": spec.kind, "description": spec.description, "sources_found": found,
                      "sources_missing": missing, **report}
            if docs:
                per_label[name] = docs
                reports[name] = {**report, "_results": results}
            else:
                missing_labels[name] = {"kind": spec.kind, "sources_missing": missing,
                                        "rejected": report["rejected"], "candidates": report["candidates"]}
        deb_all: set[str] = set()
        if ctx.system:  # which Debian packages the kept documents come from
            owners = S.dpkg_owners(sorted(set().union(*used_paths.values())))
            for name, rep in reports.items():
                pkgs = {p for path in used_paths[name] for p in owners.get(path, [])}
                pkgs |= {p for r in rep.pop("_results") for p in r.packages.get("deb", []) if r.candidates}
                rep["debian_packages"] = sorted(pkgs)
                deb_all |= pkgs
        for rep in reports.values():
            rep.pop("_results", None)
        packages = _package_versions(all_results, ctx, sorted(deb_all))
    finally:
        ctx.close()
    t_collect = time.perf_counter() - t0

    if not per_label:
        searched = "; ".join(
            f"{lab}: " + ", ".join(loc for m in info["sources_missing"] for loc in m["searched"])
            for lab, info in missing_labels.items())
        root = f" under sources_root={sources_root}" if sources_root is not None else ""
        raise CorpusEmptyError(
            f"the corpus would be empty: no documents found for labels {list(missing_labels)}{root}. "
            f"Searched: {searched}. Install sources with scripts/install_corpus_sources.sh (as root).")

    # tokenizer ------------------------------------------------------------------------------
    t1 = time.perf_counter()
    tok_info: dict[str, Any] = {}
    if isinstance(tokenizer, Tokenizer):
        T.check_special_tokens(tokenizer)
        tok = tokenizer
        tok_info["source"] = "given Tokenizer object"
    elif tokenizer is not None:
        tok = T.load_tokenizer(tokenizer)
        tok_info["source"] = str(tokenizer)
    elif not train_tokenizer and T.DEFAULT_TOKENIZER_PATH.is_file():
        tok = T.load_tokenizer(T.DEFAULT_TOKENIZER_PATH)
        tok_info["source"] = "monet_interp/assets/tokenizer.json"
    else:
        train_docs = {lab: [d.text for d in docs if d.split == "train"] for lab, docs in per_label.items()}
        sample = T.balanced_sample(train_docs, total_bytes=tokenizer_sample_bytes, seed=seed)
        tok = T.train_bpe_tokenizer(sample, vocab_size=vocab_size, progress=progress, length=len(sample))
        tok_info.update(source="trained on this corpus (train split, label-balanced sample)",
                        sample_docs=len(sample), sample_bytes=sum(len(s.encode("utf-8")) for s in sample),
                        requested_vocab_size=vocab_size)
    tok_info["vocab_size"] = tok.get_vocab_size()
    tok_info["special_tokens"] = {"pad": [T.PAD_TOKEN, T.PAD_ID], "bos": [T.BOS_TOKEN, T.BOS_ID],
                                  "eos": [T.EOS_TOKEN, T.EOS_ID]}
    if save_tokenizer is not None:
        T.save_tokenizer(tok, save_tokenizer)
        tok_info["saved_to"] = str(save_tokenizer)
    dtype = T.token_dtype(tok.get_vocab_size())
    t_tok = time.perf_counter() - t1

    # tokenise + write ---------------------------------------------------------------------
    t2 = time.perf_counter()
    _prepare_out_dir(out)
    files: dict[str, dict[str, Any]] = {}
    info = _write_bytes_atomic(out / TOKENIZER_NAME, T.tokenizer_json(tok).encode("utf-8"))
    files[TOKENIZER_NAME] = info
    tok_info.update(file=TOKENIZER_NAME, sha256=info["sha256"])

    labels_out: dict[str, Any] = {}
    totals = {s: {"docs": 0, "bytes": 0, "tokens": 0} for s in SPLITS}
    bar2 = progress_bar(total=sum(len(d) for d in per_label.values()), desc="tokenize", unit="doc", disable=not progress)
    for name, docs in per_label.items():
        splits_info: dict[str, Any] = {}
        for split in SPLITS:
            sdocs = [d for d in docs if d.split == split]
            ids = T.encode_documents(tok, [d.text for d in sdocs])
            bar2.update(len(sdocs))
            lengths = np.array([len(x) for x in ids], dtype=np.int64)
            offsets = np.zeros(len(ids) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            tokens = np.concatenate(ids).astype(dtype, copy=False) if ids else np.zeros(0, dtype=dtype)
            jsonl = "".join(json.dumps({"key": d.key, "sha256": d.sha256, "text": d.text}, ensure_ascii=False) + "\n"
                            for d in sdocs).encode("utf-8")
            rel = {"tokens": f"shards/{name}/{split}.tokens.npy", "offsets": f"shards/{name}/{split}.offsets.npy",
                   "docs": f"shards/{name}/{split}.docs.jsonl"}
            files[rel["tokens"]] = _write_bytes_atomic(out / rel["tokens"], _npy_bytes(tokens))
            files[rel["offsets"]] = _write_bytes_atomic(out / rel["offsets"], _npy_bytes(offsets))
            files[rel["docs"]] = _write_bytes_atomic(out / rel["docs"], jsonl)
            nbytes = sum(len(d.text.encode("utf-8")) for d in sdocs)
            splits_info[split] = {"docs": len(sdocs), "bytes": nbytes, "tokens": int(tokens.size), "files": rel}
            for k, v in (("docs", len(sdocs)), ("bytes", nbytes), ("tokens", int(tokens.size))):
                totals[split][k] += v
        labels_out[name] = {**reports[name], "splits": splits_info}
    bar2.close()
    t_write = time.perf_counter() - t2

    manifest: Manifest = {
        "format_version": FORMAT_VERSION,
        "builder": "monet_interp.data.corpus.build_corpus",
        "labels": labels_out,
        "label_order": list(labels_out),
        "labels_missing": missing_labels,
        "splits": list(SPLITS),
        "totals": totals,
        "dtype": dtype.name,
        "tokenizer": tok_info,
        "settings": {
            "labels_requested": label_names,
            "max_bytes_per_label": max_bytes_per_label,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "seed": seed,
            "sources_root": None if sources_root is None else str(sources_root),
            "archive_dir": None if sources_root is not None else str(S.SourceContext().archive_dir),
            "cleaning": {
                "min_doc_bytes": S.MIN_DOC_BYTES, "max_code_doc_bytes": S.MAX_CODE_DOC_BYTES,
                "max_raw_file_bytes": S.MAX_RAW_FILE_BYTES, "max_line_chars": S.MAX_LINE_CHARS,
                "max_mean_line_chars": S.MAX_MEAN_LINE_CHARS, "generated_markers": list(S.GENERATED_MARKERS),
                "natural_chunk_bytes": S.NATURAL_CHUNK_BYTES, "gloss_doc_bytes": S.GLOSS_DOC_BYTES,
                "strip_license_headers": True, "dedupe": "exact sha256 of cleaned text, per label",
                "split": "sha256(cleaned text)[:16] as a fraction of 2^64: < val -> val, < val+test -> test",
            },
        },
        "packages": packages,
        "timing_s": {"collect": round(t_collect, 2), "tokenizer": round(t_tok, 2),
                     "tokenize_and_write": round(t_write, 2), "total": round(time.perf_counter() - t0, 2)},
        "files": dict(sorted(files.items())),
    }
    _write_bytes_atomic(out / MANIFEST_NAME, (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode("utf-8"),
                        fsync=True)
    return manifest


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


class Corpus:
    """A built corpus directory. Use :meth:`Corpus.load`."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = path
        self.manifest = manifest
        self.labels: list[str] = list(manifest["label_order"])
        self.splits: tuple[str, ...] = tuple(manifest.get("splits", SPLITS))
        self._tokens: dict[tuple[str, str], np.ndarray] = {}
        self._offsets: dict[tuple[str, str], np.ndarray] = {}

    # loading ------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike[str], *, verify: bool = True) -> "Corpus":
        """Open a corpus; checks every listed file's size (and sha256 when ``verify``)."""
        root = Path(path)
        mpath = root / MANIFEST_NAME
        if not mpath.is_file():
            hint = " (an interrupted or running build?)" if (root / BUILD_MARKER).exists() else ""
            raise CorpusError(f"no {MANIFEST_NAME} in {root}: not a complete corpus directory{hint}; "
                              f"build one with `monet-interp corpus build --out {root}`")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise CorpusIntegrityError(f"unreadable manifest {mpath}: {e}") from e
        if manifest.get("format_version") != FORMAT_VERSION:
            raise CorpusError(f"{mpath}: format_version {manifest.get('format_version')!r}, expected {FORMAT_VERSION}")
        for rel, info in manifest.get("files", {}).items():
            f = root / rel
            if not f.is_file():
                raise CorpusIntegrityError(f"corpus file missing: {f}")
            size = f.stat().st_size
            if size != info["bytes"]:
                raise CorpusIntegrityError(f"corpus file {f} has {size} bytes, manifest says {info['bytes']}")
            if verify and S.file_sha256(f) != info["sha256"]:
                raise CorpusIntegrityError(f"corpus file {f} does not match its sha256 in the manifest")
        return cls(root, manifest)

    # metadata -------------------------------------------------------------------------------
    def _check(self, label: str, split: str) -> None:
        if label not in self.manifest["labels"]:
            raise KeyError(f"label {label!r} is not in this corpus; labels: {', '.join(self.labels)}")
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; splits: {', '.join(self.splits)}")

    def label_kind(self, label: str) -> str:
        self._check(label, "train")
        return self.manifest["labels"][label]["kind"]

    def labels_of_kind(self, kind: str) -> list[str]:
        return [lab for lab in self.labels if self.manifest["labels"][lab]["kind"] == kind]

    def stats(self, label: str, split: str) -> dict[str, int]:
        self._check(label, split)
        s = self.manifest["labels"][label]["splits"][split]
        return {"docs": s["docs"], "bytes": s["bytes"], "tokens": s["tokens"]}

    def tokenizer(self) -> Tokenizer:
        return T.load_tokenizer(self.path / self.manifest["tokenizer"]["file"])

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["tokenizer"]["vocab_size"])

    # data -----------------------------------------------------------------------------------
    def tokens(self, label: str, split: str = "train") -> Integer[np.ndarray, "n_tokens"]:
        """All tokens of a label's split (memory-mapped; documents as [bos, ..., eos])."""
        self._check(label, split)
        k = (label, split)
        if k not in self._tokens:
            rel = self.manifest["labels"][label]["splits"][split]["files"]["tokens"]
            self._tokens[k] = np.load(self.path / rel, mmap_mode="r", allow_pickle=False)
        return self._tokens[k]

    def offsets(self, label: str, split: str = "train") -> Integer[np.ndarray, "n_docs_plus_one"]:
        """Document boundaries into :meth:`tokens` (``offsets[i]:offsets[i+1]`` is document i)."""
        self._check(label, split)
        k = (label, split)
        if k not in self._offsets:
            rel = self.manifest["labels"][label]["splits"][split]["files"]["offsets"]
            self._offsets[k] = np.load(self.path / rel, allow_pickle=False)
        return self._offsets[k]

    def documents(self, label: str, split: str = "train") -> list[Integer[np.ndarray, "_doc_len"]]:
        """Token arrays of each document (views into the memory map)."""
        toks, offs = self.tokens(label, split), self.offsets(label, split)
        return [toks[offs[i]:offs[i + 1]] for i in range(len(offs) - 1)]

    def records(self, label: str, split: str = "test", limit: int | None = None) -> list[dict[str, str]]:
        """``{"key", "sha256", "text"}`` of the first ``limit`` documents of a split."""
        self._check(label, split)
        rel = self.manifest["labels"][label]["splits"][split]["files"]["docs"]
        out: list[dict[str, str]] = []
        with open(self.path / rel, encoding="utf-8") as fh:
            for line in fh:
                if limit is not None and len(out) >= limit:
                    break
                out.append(json.loads(line))
        return out

    def texts(self, label: str, split: str = "test", limit: int | None = None) -> list[str]:
        """Cleaned raw text of the first ``limit`` documents (same order as :meth:`documents`)."""
        return [r["text"] for r in self.records(label, split, limit)]

    def sample_batch(
        self,
        split: str,
        batch_size: int,
        seq_len: int,
        generator: torch.Generator | np.random.Generator,
        labels: Sequence[str] | None = None,
        return_labels: bool = False,
        label_power: float = 0.0,
    ) -> Int[torch.Tensor, "batch window"] | tuple[Int[torch.Tensor, "batch window"], Int[torch.Tensor, "batch"]]:
        """``batch_size`` windows of ``seq_len + 1`` tokens; each row's label is drawn from
        ``labels`` (default: every label with enough tokens in ``split``), uniformly when
        ``label_power`` is 0, else with probability proportional to (tokens in ``split``) **
        ``label_power`` (1: the natural mix; 0.5: small labels repeat less than uniform would make
        them), then a uniform start inside that label's token stream. Deterministic given the
        generator's state. With ``return_labels`` also returns each row's index into ``labels``."""
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be positive, got {batch_size}, {seq_len}")
        if not 0.0 <= label_power <= 1.0:
            raise ValueError(f"label_power must be in [0, 1], got {label_power}")
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; splits: {', '.join(self.splits)}")
        window = seq_len + 1
        if labels is None:
            labs = [lab for lab in self.labels if self.stats(lab, split)["tokens"] >= window]
            if not labs:
                raise ValueError(f"no label has {window} tokens in split {split!r}")
        else:
            labs = list(labels)
            for lab in labs:
                if self.stats(lab, split)["tokens"] < window:
                    raise ValueError(f"label {lab!r} has {self.stats(lab, split)['tokens']} tokens in split "
                                     f"{split!r}, fewer than seq_len + 1 = {window}")
        if not labs:
            raise ValueError("labels is empty")
        weights = None
        if label_power > 0:
            sizes = np.array([self.stats(lab, split)["tokens"] for lab in labs], dtype=np.float64)
            weights = sizes ** label_power / (sizes ** label_power).sum()
        if isinstance(generator, torch.Generator):
            if weights is None:
                which = torch.randint(0, len(labs), (batch_size,), generator=generator).tolist()
            else:
                which = torch.multinomial(torch.from_numpy(weights), batch_size, replacement=True,
                                          generator=generator).tolist()
            u = torch.rand(batch_size, generator=generator, dtype=torch.float64).tolist()
        else:
            which = (generator.integers(0, len(labs), size=batch_size) if weights is None
                     else generator.choice(len(labs), size=batch_size, p=weights)).tolist()
            u = generator.random(batch_size).tolist()
        out = np.empty((batch_size, window), dtype=np.int64)
        for i in range(batch_size):
            toks = self.tokens(labs[which[i]], split)
            n_starts = toks.shape[0] - window + 1
            start = min(int(u[i] * n_starts), n_starts - 1)
            out[i] = toks[start:start + window]
        batch = torch.from_numpy(out)
        if return_labels:
            return batch, torch.tensor(which, dtype=torch.long)
        return batch

    def __repr__(self) -> str:
        return f"Corpus({str(self.path)!r}, labels={len(self.labels)}, vocab={self.vocab_size})"


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def format_summary(manifest: Manifest) -> str:
    """A per-label table of docs/bytes/tokens per split."""
    rows = []
    head = f"{'label':22s} {'kind':7s} " + " ".join(f"{s + ' docs':>10s} {s + ' MB':>9s} {s + ' ktok':>11s}" for s in SPLITS) + f" {'B/tok':>6s}"
    rows.append(head)
    rows.append("-" * len(head))
    for lab, info in manifest["labels"].items():
        sp = info["splits"]
        tb = sum(sp[s]["bytes"] for s in SPLITS)
        tt = sum(sp[s]["tokens"] - 2 * sp[s]["docs"] for s in SPLITS)
        cells = " ".join(f"{sp[s]['docs']:10d} {sp[s]['bytes'] / 1e6:9.3f} {sp[s]['tokens'] / 1e3:11.1f}" for s in SPLITS)
        rows.append(f"{lab:22s} {info['kind']:7s} {cells} {tb / max(tt, 1):6.2f}")
    tot = manifest["totals"]
    rows.append("-" * len(head))
    cells = " ".join(f"{tot[s]['docs']:10d} {tot[s]['bytes'] / 1e6:9.3f} {tot[s]['tokens'] / 1e3:11.1f}" for s in SPLITS)
    rows.append(f"{'total':22s} {'':7s} {cells}")
    if manifest.get("labels_missing"):
        rows.append("")
        rows.append("missing labels (no source found): " + ", ".join(manifest["labels_missing"]))
    missing_sources = [(lab, m["name"]) for lab, info in manifest["labels"].items() for m in info["sources_missing"]]
    if missing_sources:
        rows.append("missing sources: " + ", ".join(f"{lab}/{name}" for lab, name in missing_sources))
    t = manifest["tokenizer"]
    rows.append(f"tokenizer: vocab {t['vocab_size']}, {t['source']}, sha256 {t['sha256'][:16]}")
    rows.append(f"build time: {manifest['timing_s']['total']:.1f} s")
    return "\n".join(rows)


__all__ = [
    "DEFAULT_MAX_BYTES_PER_LABEL", "SPLITS", "Corpus", "CorpusEmptyError", "CorpusError", "CorpusIntegrityError",
    "Manifest", "build_corpus", "format_summary", "resolve_labels", "split_of",
]
