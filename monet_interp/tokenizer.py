"""Tokenizers for MONET checkpoints: ``tokenizer.json`` (HF ``tokenizers``) or a SentencePiece
``tokenizer.model`` (through ``transformers`` when it is installed)."""

from __future__ import annotations

from pathlib import Path

BOS_CANDIDATES = ("<s>", "<|bos|>", "<bos>")
EOS_CANDIDATES = ("</s>", "<|eos|>", "<eos>", "<|endoftext|>")
PAD_CANDIDATES = ("<pad>", "<|pad|>", "<unk>")


class MonetTokenizer:
    """A small common interface over the two tokenizer formats."""

    def __init__(self, backend, *, bos_token_id: int | None, eos_token_id: int | None, pad_token_id: int | None,
                 kind: str, source: str):
        self._backend, self.kind, self.source = backend, kind, source
        self.bos_token_id, self.eos_token_id = bos_token_id, eos_token_id
        self.pad_token_id = pad_token_id if pad_token_id is not None else eos_token_id

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_file(cls, path: str | Path) -> MonetTokenizer:
        from tokenizers import Tokenizer

        path = Path(path)
        try:
            backend = Tokenizer.from_file(str(path))
        except Exception as err:  # the tokenizers error types are not public
            raise ValueError(f"could not read tokenizer file {path}: {err}") from err

        def first_id(candidates):
            for token in candidates:
                index = backend.token_to_id(token)
                if index is not None:
                    return index
            return None

        return cls(backend, bos_token_id=first_id(BOS_CANDIDATES), eos_token_id=first_id(EOS_CANDIDATES),
                   pad_token_id=first_id(PAD_CANDIDATES), kind="tokenizers", source=str(path))

    @classmethod
    def from_folder(cls, folder: str | Path) -> MonetTokenizer | None:
        """The tokenizer stored in a checkpoint folder, or None if it has none."""
        folder = Path(folder)
        if (folder / "tokenizer.json").is_file():
            return cls.from_file(folder / "tokenizer.json")
        if (folder / "tokenizer.model").is_file():
            try:
                from transformers import AutoTokenizer
            except ImportError as err:
                raise ImportError(f"{folder} has a SentencePiece tokenizer.model; reading it needs "
                                  "`pip install transformers sentencepiece`") from err
            backend = AutoTokenizer.from_pretrained(str(folder))
            return cls(backend, bos_token_id=backend.bos_token_id, eos_token_id=backend.eos_token_id,
                       pad_token_id=backend.pad_token_id, kind="transformers", source=str(folder))
        return None

    # ------------------------------------------------------------------ use
    @property
    def vocab_size(self) -> int:
        if self.kind == "tokenizers":
            return self._backend.get_vocab_size()
        return len(self._backend)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        if self.kind == "tokenizers":
            return self._backend.encode(text, add_special_tokens=False).ids
        return self._backend.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        if self.kind == "tokenizers":
            return self._backend.decode(list(ids), skip_special_tokens=False)
        return self._backend.decode(list(ids))

    def id_to_token(self, index: int) -> str:
        if self.kind == "tokenizers":
            return self._backend.id_to_token(int(index))
        return self._backend.convert_ids_to_tokens(int(index))

    def token_strings(self, ids: list[int]) -> list[str]:
        """Each id decoded on its own (readable per-token strings for reports)."""
        return [self.decode([int(i)]) for i in ids]

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        if self.kind == "tokenizers":
            self._backend.save(str(folder / "tokenizer.json"))
        else:
            self._backend.save_pretrained(str(folder))
