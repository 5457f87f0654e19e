"""Offline corpus (labelled code and natural-language text) and the byte-level BPE tokenizer.

    from monet_interp.data import Corpus, build_corpus
    build_corpus("data/corpus")                  # or: monet-interp corpus build
    corpus = Corpus.load("data/corpus")
    batch = corpus.sample_batch("train", 32, 128, torch.Generator().manual_seed(0))

    from monet_interp.data import MemoryCorpus, open_corpus
    corpus = open_corpus("data/corpus")          # or an open corpus, {label: [text]} / <label>/*.txt with model=
    toy = MemoryCorpus.from_streams({"python": {"train": ids}}, kinds={"python": "code"})
"""

from monet_interp.data.corpus import (
    SPLITS,
    Corpus,
    CorpusEmptyError,
    CorpusError,
    CorpusIntegrityError,
    Manifest,
    build_corpus,
    format_summary,
    resolve_labels,
    split_of,
)
from monet_interp.data.memory import CorpusSpecError, MemoryCorpus, text_corpus, text_folder_corpus
from monet_interp.data.opening import open_corpus
from monet_interp.data.sources import CODE_LABELS, DEFAULT_LABELS, LABELS, NATURAL_LABELS, label_kind
from monet_interp.data.tokenizer_training import (
    BOS_ID,
    DEFAULT_TOKENIZER_PATH,
    EOS_ID,
    PAD_ID,
    encode_documents,
    load_tokenizer,
    train_bpe_tokenizer,
)

__all__ = [
    "BOS_ID", "CODE_LABELS", "DEFAULT_LABELS", "DEFAULT_TOKENIZER_PATH", "EOS_ID", "LABELS", "NATURAL_LABELS",
    "PAD_ID", "SPLITS", "Corpus", "CorpusEmptyError", "CorpusError", "CorpusIntegrityError", "CorpusSpecError",
    "Manifest", "MemoryCorpus", "build_corpus", "encode_documents", "format_summary", "label_kind", "load_tokenizer",
    "open_corpus", "resolve_labels", "split_of", "text_corpus", "text_folder_corpus",
    "train_bpe_tokenizer",
]
