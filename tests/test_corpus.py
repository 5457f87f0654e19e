"""Corpus builder, reader and tokenizer, on a small synthetic source tree built in tmp_path."""

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from monet_interp.data import corpus as C
from monet_interp.data import sources as S
from monet_interp.data import tokenizer_training as T

from fake_sources import make_tree

FIXTURE_LABELS = ["python", "c", "java", "perl", "rust", "news_business", "news_sport", "news_entertainment",
                  "manpages"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("tree"))


@pytest.fixture(scope="module")
def tiny_tokenizer(tree: Path) -> Tokenizer:
    texts = [p.read_text() for p in sorted((tree / "usr/lib/python3.11/pkg").glob("*.py"))]
    texts += [p.read_text() for p in sorted((tree / "usr/include").glob("*.h"))]
    return T.train_bpe_tokenizer(texts, vocab_size=400)


@pytest.fixture(scope="module")
def built(tree: Path, tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Tokenizer) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("corpus") / "c"
    manifest = C.build_corpus(out, labels=FIXTURE_LABELS, sources_root=tree, tokenizer=tiny_tokenizer,
                              max_bytes_per_label=1_000_000, val_fraction=0.2, test_fraction=0.2, progress=False)
    return out, manifest


def _build(tree: Path, out: Path, tok: Tokenizer, **kw) -> dict:
    args = dict(labels=FIXTURE_LABELS, sources_root=tree, tokenizer=tok, max_bytes_per_label=1_000_000,
                val_fraction=0.2, test_fraction=0.2, progress=False)
    args.update(kw)
    return C.build_corpus(out, **args)


# --------------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------------


def test_labels_found_and_missing_reported(built: tuple[Path, dict]) -> None:
    out, m = built
    corpus = C.Corpus.load(out)
    assert corpus.labels == ["python", "java", "c", "perl", "news_business", "news_sport", "manpages"]
    assert corpus.label_kind("python") == "code" and corpus.label_kind("news_sport") == "natural"
    # labels whose sources are absent are skipped and reported with what was searched
    assert set(m["labels_missing"]) == {"rust", "news_entertainment"}
    searched = m["labels_missing"]["rust"]["sources_missing"][0]["searched"]
    assert any("rust/html/src" in s for s in searched)
    # cleaning: duplicate, generated, minified, too-small and .so stubs are rejected, not kept
    rej = m["labels"]["python"]["rejected"]
    assert rej.get("duplicate", 0) >= 1 and rej.get("generated", 0) == 1 and rej.get("minified", 0) == 1
    assert rej.get("too_small", 0) >= 1
    assert m["labels"]["manpages"]["rejected"].get("too_small", 0) >= 1
    texts = [t for s in C.SPLITS for t in corpus.texts("python", s)]
    assert not any("Symbolic algebra" in t for t in texts)  # docstring packages stay out of `python`
    assert not any("Copyright" in t for t in texts)          # licence headers stripped
    assert not any("vector" in r["key"] for s in C.SPLITS for r in corpus.records("c", s))
    man = corpus.texts("manpages", "train", limit=1)[0]
    assert "\\f" not in man and ".TH" not in man and "NAME" in man


def test_manifest_hashes_match_files(built: tuple[Path, dict]) -> None:
    out, m = built
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["files"] == m["files"]
    listed = set(m["files"])
    for rel, info in m["files"].items():
        data = (out / rel).read_bytes()
        assert hashlib.sha256(data).hexdigest() == info["sha256"] and len(data) == info["bytes"]
    actual = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} - {"manifest.json", C.BUILD_MARKER}
    assert actual == listed  # nothing stray (no temp files)
    assert m["tokenizer"]["sha256"] == m["files"]["tokenizer.json"]["sha256"]
    for lab, info in m["labels"].items():
        for split in C.SPLITS:
            s = info["splits"][split]
            assert s["tokens"] == int(np.load(out / s["files"]["tokens"]).size)
        assert sum(info["splits"][s]["bytes"] for s in C.SPLITS) == info["bytes"] <= 1_000_000
    assert m["settings"]["seed"] == 0 and m["dtype"] == "uint16"


def test_documents_tokens_texts_consistent(built: tuple[Path, dict], tiny_tokenizer: Tokenizer) -> None:
    out, _ = built
    corpus = C.Corpus.load(out)
    for split in C.SPLITS:
        docs = corpus.documents("java", split)
        texts = corpus.texts("java", split)
        assert len(docs) == len(texts) == corpus.stats("java", split)["docs"]
        toks = corpus.tokens("java", split)
        assert toks.dtype == np.uint16 and sum(len(d) for d in docs) == len(toks)
        for d, t in zip(docs, texts):
            assert d[0] == T.BOS_ID and d[-1] == T.EOS_ID
            assert tiny_tokenizer.decode(d[1:-1].tolist()) == t
    assert corpus.texts("java", "train", limit=2) == corpus.texts("java", "train")[:2]
    with pytest.raises(KeyError, match="not in this corpus"):
        corpus.tokens("rust", "train")
    with pytest.raises(ValueError, match="unknown split"):
        corpus.tokens("java", "dev")


def test_split_depends_only_on_hash(built: tuple[Path, dict], tree: Path, tmp_path: Path,
                                    tiny_tokenizer: Tokenizer) -> None:
    out, m = built
    # same settings twice -> byte-identical shards
    m2 = _build(tree, tmp_path / "again", tiny_tokenizer)
    assert m2["files"] == m["files"]
    # another seed and a byte cap (a different sample): shared documents keep their split
    m3 = _build(tree, tmp_path / "other", tiny_tokenizer, seed=7, max_bytes_per_label=6000)
    a, b = C.Corpus.load(out), C.Corpus.load(tmp_path / "other")
    split_a = {r["sha256"]: s for lab in a.labels for s in C.SPLITS for r in a.records(lab, s)}
    split_b = {r["sha256"]: s for lab in b.labels for s in C.SPLITS for r in b.records(lab, s)}
    shared = set(split_a) & set(split_b)
    assert shared and all(split_a[h] == split_b[h] for h in shared)
    assert all(split_a[h] == C.split_of(h, 0.2, 0.2) for h in split_a)
    assert all(info["bytes"] <= 6000 for info in m3["labels"].values())
    assert {s for s in split_a.values()} == set(C.SPLITS)


def test_empty_corpus_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    with pytest.raises(C.CorpusEmptyError, match=r"empty.*python.*Searched") as ei:
        C.build_corpus(tmp_path / "out", labels=["python", "java"], sources_root=tmp_path / "root",
                       train_tokenizer=True, progress=False)
    assert isinstance(ei.value, ValueError) and "src.zip" in str(ei.value)
    assert not (tmp_path / "out").exists()


def test_bad_arguments(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown corpus label"):
        C.build_corpus(tmp_path / "o", labels=["klingon"], sources_root=tree, progress=False)
    with pytest.raises(ValueError, match="val_fraction"):
        C.build_corpus(tmp_path / "o", labels=["c"], sources_root=tree, val_fraction=0.7, test_fraction=0.5,
                       progress=False)
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("x")
    with pytest.raises(C.CorpusError, match="refusing"):
        _build(tree, tmp_path / "precious", T.train_bpe_tokenizer(["abc abc"], vocab_size=260), labels=["c"])
    assert (tmp_path / "precious" / "thesis.tex").exists()


def test_interrupted_build_leaves_nothing_loadable(tree: Path, tmp_path: Path, tiny_tokenizer: Tokenizer,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "c"
    _build(tree, out, tiny_tokenizer, labels=["c", "perl"])
    C.Corpus.load(out)  # a complete corpus exists...
    real = C._write_bytes_atomic
    calls = {"n": 0}

    def flaky(path: Path, data: bytes, fsync: bool = False) -> dict:
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("simulated crash mid-build")
        return real(path, data, fsync)

    monkeypatch.setattr(C, "_write_bytes_atomic", flaky)
    with pytest.raises(KeyboardInterrupt):
        _build(tree, out, tiny_tokenizer, labels=["c", "perl"], seed=3)
    # ...but the interrupted rebuild invalidated it: nothing loads
    with pytest.raises(C.CorpusError, match="interrupted"):
        C.Corpus.load(out)
    monkeypatch.setattr(C, "_write_bytes_atomic", real)
    _build(tree, out, tiny_tokenizer, labels=["c", "perl"])  # a rebuild into the same dir works
    corpus = C.Corpus.load(out)
    # a damaged shard is refused
    rel = corpus.manifest["labels"]["c"]["splits"]["train"]["files"]["tokens"]
    data = bytearray((out / rel).read_bytes())
    data[-1] ^= 0xFF
    (out / rel).write_bytes(bytes(data))
    with pytest.raises(C.CorpusIntegrityError, match="sha256"):
        C.Corpus.load(out)
    (out / rel).write_bytes(bytes(data[:-2]))
    with pytest.raises(C.CorpusIntegrityError, match="bytes"):
        C.Corpus.load(out, verify=False)


# --------------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------------


def test_sample_batch_deterministic_and_balanced(built: tuple[Path, dict]) -> None:
    corpus = C.Corpus.load(built[0])
    b1 = corpus.sample_batch("train", 8, 16, torch.Generator().manual_seed(5))
    b2 = corpus.sample_batch("train", 8, 16, torch.Generator().manual_seed(5))
    b3 = corpus.sample_batch("train", 8, 16, torch.Generator().manual_seed(6))
    assert b1.shape == (8, 17) and b1.dtype == torch.long
    assert torch.equal(b1, b2) and not torch.equal(b1, b3)
    n1 = corpus.sample_batch("val", 4, 8, np.random.default_rng(1))
    n2 = corpus.sample_batch("val", 4, 8, np.random.default_rng(1))
    assert torch.equal(n1, n2)

    batch, which = corpus.sample_batch("train", 4000, 8, torch.Generator().manual_seed(0), return_labels=True)
    counts = np.bincount(which.numpy(), minlength=len(corpus.labels))
    assert counts.min() > 0.8 * 4000 / len(corpus.labels) and counts.max() < 1.2 * 4000 / len(corpus.labels)
    # every row is a real window of the label it was drawn from
    for i in range(0, 4000, 397):
        toks = np.asarray(corpus.tokens(corpus.labels[int(which[i])], "train"), dtype=np.int64)
        row = batch[i].numpy()
        starts = np.flatnonzero(toks[: len(toks) - len(row) + 1] == row[0])
        assert any(np.array_equal(toks[s:s + len(row)], row) for s in starts)

    sub, w = corpus.sample_batch("train", 50, 8, torch.Generator().manual_seed(0), labels=["c", "perl"],
                                 return_labels=True)
    assert set(w.tolist()) <= {0, 1}
    with pytest.raises(ValueError, match="fewer than"):
        corpus.sample_batch("test", 2, 10**6, torch.Generator(), labels=["c"])
    with pytest.raises(ValueError, match="no label has"):
        corpus.sample_batch("test", 2, 10**6, torch.Generator())


# --------------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------------


def test_tokenizer_training_deterministic(tree: Path) -> None:
    texts = {lab: [p.read_text() for p in sorted(d.glob(pat))] for lab, d, pat in
             (("python", tree / "usr/lib/python3.11/pkg", "*.py"), ("c", tree / "usr/include", "*.h"),
              ("perl", tree / "usr/share/perl5/Demo", "*.pm"))}
    s1 = T.balanced_sample(texts, total_bytes=20_000, seed=0)
    s2 = T.balanced_sample(texts, total_bytes=20_000, seed=0)
    assert s1 == s2 and 15_000 < sum(len(t) for t in s1) <= 24_000
    t1 = T.train_bpe_tokenizer(s1, vocab_size=500)
    t2 = T.train_bpe_tokenizer(s2, vocab_size=500)
    assert T.tokenizer_sha256(t1) == T.tokenizer_sha256(t2)
    assert t1.get_vocab_size() == 500
    assert [t1.token_to_id(x) for x in T.SPECIAL_TOKENS] == [0, 1, 2]
    text = "def beta_1(x):\n    return x * 7  # ünïcode ✓\n"
    assert t1.decode(t1.encode(text).ids) == text
    assert T.BOS_ID not in t1.encode(text).ids  # no post-processor: specials only via encode_documents


def test_train_tokenizer_in_build_and_save(tree: Path, tmp_path: Path) -> None:
    m = C.build_corpus(tmp_path / "c", labels=["c", "perl", "news_business"], sources_root=tree,
                       train_tokenizer=True, vocab_size=300, save_tokenizer=tmp_path / "tok.json", progress=False)
    assert m["tokenizer"]["vocab_size"] == 300 and "trained" in m["tokenizer"]["source"]
    saved = T.load_tokenizer(tmp_path / "tok.json")
    assert T.tokenizer_sha256(saved) == m["tokenizer"]["sha256"]
    assert C.Corpus.load(tmp_path / "c").tokenizer().get_vocab_size() == 300


def test_committed_tokenizer_asset() -> None:
    path = T.DEFAULT_TOKENIZER_PATH
    assert path.is_file() and path.stat().st_size < 1_000_000
    tok = T.load_tokenizer()
    assert tok.get_vocab_size() == T.DEFAULT_VOCAB_SIZE
    for text in ("fn main() { println!(\"hi\"); }\n", "The Prime Minister said on Tuesday that...\n"):
        ids = tok.encode(text).ids
        assert tok.decode(ids) == text and len(ids) < len(text) / 2


# --------------------------------------------------------------------------------------------
# cleaning helpers
# --------------------------------------------------------------------------------------------


def test_cleaning_rules() -> None:
    body = "\n".join(f"x{i} = {i}" for i in range(30))
    with pytest.raises(S.Reject, match="minified"):
        S.clean_code("x = 1\n" + "y" * 1200 + "\n" + body)
    with pytest.raises(S.Reject, match="generated"):
        S.clean_code("// Code generated by protoc. DO NOT EDIT.\n" + body)
    with pytest.raises(S.Reject, match="too_small"):
        S.clean_code("x = 1\n")
    lic = "/*\n * Copyright 2001 Someone\n * Licensed under the Apache License\n */\n\nint main(void);\n" + body
    assert S.clean_code(lic, ("/*", "//")).startswith("int main(void);")
    keep = "/* A helpful comment about parsing */\nint main(void);\n" + body
    assert S.clean_code(keep, ("/*", "//")).startswith("/* A helpful")
    sh = "#!/bin/sh\n# Copyright (c) 2010 X\n# GPL licence\n\necho hi\n" + body
    assert S.clean_code(sh, ("#",)).startswith("#!/bin/sh\necho hi")
    assert S.normalize_text("a  \r\nb\r\n\n\n\n\nc\x07") == "a\nb\n\n\nc\n"
    big = "\n\n".join(f"def f{i}():\n    return {i}\n" + "# pad\n" * 40 for i in range(60))
    pieces = S.chunk_code(big, target=1024)
    assert len(pieces) > 5 and all(len(p) < 4 * 1024 for p in pieces)
    assert "".join(pieces).replace("\n", "") == big.replace("\n", "")


def test_rustdoc_and_troff_and_docstrings() -> None:
    page = ('<html><pre class="rust"><code><a href=#1 id=1 data-nosnippet>1</a><span class="kw">fn</span> '
            'main() -&gt; () {}\n<a href=#2 id=2 data-nosnippet>2</a><span class="comment">// &amp; done</span>'
            '</code></pre></html>')
    assert S.rustdoc_html_to_source(page) == "fn main() -> () {}\n// & done"
    man = ('.\\" comment\n.TH LS 1\n.SH NAME\nls \\- list \\fBdirectory\\fR contents\n.SH OPTIONS\n.TP\n'
           '\\fB\\-a\\fR, \\fB\\-\\-all\\fR\ndo not ignore entries\n.PP\nSee \\(lqinfo\\(rq.\n')
    text = S.troff_to_text(man)
    assert "ls - list directory contents" in text and "-a, --all" in text and "\u201cinfo\u201d" in text
    assert "\\" not in text and "comment" not in text
    src = 'def f():\n    """Compute the determinant of a square matrix by cofactor expansion."""\n'
    assert "determinant" in S.extract_docstrings(src)
    with pytest.raises(S.Reject):
        S.extract_docstrings("def f(:\n")


def test_registry_and_label_resolution() -> None:
    assert set(S.CODE_LABELS) >= {"python", "java", "c", "cpp", "rust", "perl", "javascript", "vimscript"}
    assert all(S.label_kind(x) == "natural" for x in S.NATURAL_LABELS)
    assert C.resolve_labels(None) == list(S.DEFAULT_LABELS)
    assert C.resolve_labels("c,python,c") == ["python", "c"]
    assert set(C.resolve_labels("code")) == {x for x in S.CODE_LABELS if x in S.DEFAULT_LABELS}
    assert C.resolve_labels("all") == list(S.LABELS)
    n_code = sum(1 for x in S.DEFAULT_LABELS if S.label_kind(x) == "code")
    n_nat = len(S.DEFAULT_LABELS) - n_code
    assert 0.5 <= n_nat / n_code <= 2.5


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="monet-interp")
    from monet_interp.analyses.cli.corpus import register

    register(p.add_subparsers(dest="command"))
    return p


@pytest.mark.parametrize("argv, msg", [
    (["--max-mb-per-label", "-1"], "must be positive"),
    (["--labels", "klingon"], "unknown corpus label"),
    (["--tokenizer", "/nonexistent/tok.json"], "no such file"),
    (["--train-tokenizer", "--tokenizer", __file__], "mutually exclusive"),
    (["--train-tokenizer", "--vocab-size", "100"], "vocab-size"),
])
def test_cli_bad_arguments(argv: list[str], msg: str, capsys: pytest.CaptureFixture[str]) -> None:
    p = _parser()
    args = p.parse_args(["corpus", "build", *argv])
    with pytest.raises(SystemExit) as ei:
        args.func(args)
    assert ei.value.code == 2 and msg in capsys.readouterr().err


def test_cli_build_prints_summary(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = _parser()
    args = p.parse_args(["corpus", "build", "--out", str(tmp_path / "c"), "--sources-root", str(tree),
                         "--labels", "c,perl,rust", "--train-tokenizer", "--vocab-size", "300", "--quiet"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "perl" in out and "total" in out and "missing labels" in out and "rust" in out
    assert C.Corpus.load(tmp_path / "c").labels == ["c", "perl"]
    empty = tmp_path / "empty"
    empty.mkdir()
    args = p.parse_args(["corpus", "build", "--out", str(tmp_path / "d"), "--sources-root", str(empty),
                         "--labels", "c", "--train-tokenizer", "--quiet"])
    assert args.func(args) == 1
    assert "empty" in capsys.readouterr().err


