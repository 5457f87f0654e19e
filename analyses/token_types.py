"""Code token-type labels from Pygments: keyword, identifier, string, comment, number, operator.

A second, finer labelling axis than the programming language: every BPE token of a code
document gets the type of the first non-whitespace character it covers, as Pygments' lexer for
that language tokenises the document text. Tokens covering only whitespace (and bos/eos) get -1
(no class). Type mapping (Pygments token type -> class):

    Keyword.*                          keyword
    Name.* (incl. builtins, functions) identifier
    Literal.String.* (incl. docstrings) string
    Comment.*                          comment
    Literal.Number.*                   number
    Operator.*, Punctuation.*          operator   (brackets, commas, ...: "operator/punctuation")
    anything else (Text, Error, ...)   -1

    typer = PygmentsTokenTyper(corpus, split="val")
    stats = compute_routing_stats(model, corpus, token_classes=typer, token_sample=4096)

:class:`PygmentsTokenTyper` implements ``monet_interp.stats.TokenClassifier``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

TOKEN_TYPES = ("keyword", "identifier", "string", "comment", "number", "operator")
NO_CLASS = -1

# corpus label -> Pygments lexer alias (labels not listed are tried as aliases themselves)
LEXER_ALIASES: dict[str, str] = {
    "python": "python", "java": "java", "c": "c", "cpp": "cpp", "c++": "cpp", "rust": "rust", "perl": "perl",
    "vimscript": "vim", "vim": "vim", "javascript": "javascript", "typescript": "typescript", "go": "go",
    "lua": "lua", "php": "php", "sql": "sql", "ruby": "ruby", "tcl": "tcl", "cmake": "cmake", "shell": "bash",
    "bash": "bash",
}


def _pygments_token():
    try:
        from pygments import token
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("token types need Pygments: pip install pygments") from err
    return token


def type_class(ttype: Any) -> int:
    """Class index (into TOKEN_TYPES) of a Pygments token type, or -1."""
    T = _pygments_token()
    for k, parent in enumerate((T.Keyword, T.Name, T.String, T.Comment, T.Number)):
        if ttype in parent:
            return k
    if ttype in T.Operator or ttype in T.Punctuation:
        return 5
    return NO_CLASS


def get_lexer(label: str, aliases: Mapping[str, str] | None = None):
    """Pygments lexer for a corpus label (None when Pygments has none). No text preprocessing, so
    character positions are those of the original text."""
    from pygments.lexers import get_lexer_by_name
    from pygments.util import ClassNotFound

    name = (aliases or LEXER_ALIASES).get(label.lower(), label.lower())
    options = dict(stripnl=False, stripall=False, ensurenl=False)
    if name == "php":
        options["startinline"] = True
    try:
        return get_lexer_by_name(name, **options)
    except ClassNotFound:
        return None


def char_classes(text: str, lexer: Any) -> np.ndarray:
    """int8 [len(text)]: the token class of every character of ``text``."""
    out = np.full(len(text), NO_CLASS, dtype=np.int8)
    cache: dict[Any, int] = {}
    for index, ttype, value in lexer.get_tokens_unprocessed(text):
        c = cache.get(ttype)
        if c is None:
            c = cache[ttype] = type_class(ttype)
        if c != NO_CLASS and value:
            out[index:index + len(value)] = c
    return out


def token_classes_from_offsets(text: str, chars: np.ndarray, offsets: Sequence[tuple[int, int]]) -> np.ndarray:
    """Class of each token span [a, b): that of its first non-whitespace character (-1 if none)."""
    out = np.full(len(offsets), NO_CLASS, dtype=np.int8)
    for k, (a, b) in enumerate(offsets):
        for p in range(a, min(b, len(text))):
            if not text[p].isspace():
                out[k] = chars[p]
                break
    return out


def classify_text(text: str, label: str, tokenizer: Any) -> tuple[list[int], np.ndarray] | None:
    """(token ids, classes) of ``text`` encoded without special tokens; None without a lexer."""
    lexer = get_lexer(label)
    if lexer is None:
        return None
    enc = tokenizer.encode(text, add_special_tokens=False)
    return list(enc.ids), token_classes_from_offsets(text, char_classes(text, lexer), enc.offsets)


class PygmentsTokenTyper:
    """Token types of code documents of a corpus (a ``TokenClassifier`` for the statistics).

    Args:
        corpus: a ``monet_interp.data.Corpus`` (or anything with ``label_kind``, ``texts(label,
            split)`` aligned with ``documents(label, split)``, and ``tokenizer()``).
        split: the split whose documents will be classified (must match the statistics' split).
        tokenizer: a ``tokenizers.Tokenizer`` (default: ``corpus.tokenizer()``) that encodes each
            text to exactly the document's tokens between bos and eos; checked per document.
        labels: restrict to these labels (default: every "code" label with a Pygments lexer).
    """

    class_names = TOKEN_TYPES

    def __init__(self, corpus: Any, split: str = "val", tokenizer: Any = None, labels: Sequence[str] | None = None):
        self.corpus, self.split = corpus, split
        self.tokenizer = tokenizer if tokenizer is not None else corpus.tokenizer()
        self._labels = set(labels) if labels is not None else None
        self._texts: dict[str, list[str]] = {}
        self._lexers: dict[str, Any] = {}
        self.mismatches = 0

    def lexer(self, label: str):
        if label not in self._lexers:
            self._lexers[label] = get_lexer(label)
        return self._lexers[label]

    def applies_to(self, label: str) -> bool:
        if self._labels is not None and label not in self._labels:
            return False
        return self.corpus.label_kind(label) == "code" and self.lexer(label) is not None

    def classes(self, label: str, doc_index: int, tokens: np.ndarray) -> np.ndarray:
        """Classes of a document's tokens ([bos, ..., eos]: bos/eos get -1)."""
        if label not in self._texts:
            self._texts[label] = self.corpus.texts(label, self.split)
        text = self._texts[label][doc_index]
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        body = np.asarray(tokens[1:1 + len(enc.ids)], dtype=np.int64)
        if len(body) and not np.array_equal(body, np.asarray(enc.ids[:len(body)], dtype=np.int64)):
            raise ValueError(f"document {doc_index} of {label!r}: the tokenizer does not reproduce the corpus tokens; "
                             f"pass the tokenizer the corpus was built with")
        cls = token_classes_from_offsets(text, char_classes(text, self.lexer(label)), enc.offsets)
        out = np.full(max(len(tokens), len(enc.ids) + 2), NO_CLASS, dtype=np.int8)
        out[1:1 + len(cls)] = cls
        return out


def type_counts(classes: np.ndarray) -> dict[str, int]:
    """How many tokens of each type an array of classes holds."""
    return {name: int((classes == k).sum()) for k, name in enumerate(TOKEN_TYPES)}
