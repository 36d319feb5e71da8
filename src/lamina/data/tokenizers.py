"""Tokenizers: UTF-8 bytes (the default) and whitespace words (PTB/WikiText).

Both turn raw corpus bytes into a 1-D ``torch.long`` tensor and back, and
serialize to a small dict that a checkpoint stores, so a model is always
decoded with the vocabulary it was trained on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch

from lamina.errors import LaminaError

EOS = "<eos>"
UNK = "<unk>"


def _as_list(ids: torch.Tensor | Sequence[int]) -> list[int]:
    if isinstance(ids, torch.Tensor):
        return ids.reshape(-1).tolist()
    return list(ids)


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, plus ``eos_id = 256`` between documents.

    No vocabulary to fit or download, works for any language or binary file,
    and its loss in bits per byte compares across tokenizers.
    """

    name = "bytes"
    vocab_size = 257
    eos_id = 256

    def encode(self, data: bytes | str) -> torch.Tensor:
        """Bytes (or a str, UTF-8 encoded) -> 1-D long tensor of byte values."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        if not data:
            return torch.empty(0, dtype=torch.long)
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.long)

    def encode_documents(self, docs: Sequence[bytes]) -> torch.Tensor:
        """Each document's bytes followed by ``eos_id``, all concatenated.

        The documents are joined with a placeholder byte whose positions are
        then overwritten with ``eos_id``: one pass, no Python loop over bytes.
        """
        out = self.encode(b"\0".join(docs) + b"\0" if docs else b"")
        out[torch.cumsum(torch.tensor([len(d) + 1 for d in docs], dtype=torch.long), 0) - 1] = self.eos_id
        return out

    def decode(self, ids: torch.Tensor | Sequence[int]) -> bytes:
        """Ids -> bytes; ``eos_id`` (and anything outside 0..255) is dropped."""
        return bytes(i for i in _as_list(ids) if 0 <= i < 256)

    def to_dict(self) -> dict:
        return {"type": self.name}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ByteTokenizer)

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return "ByteTokenizer()"


def require_bytes(vocab_size: int, key: str) -> None:
    """Refuse any vocabulary but the byte tokenizer's for a model that reads UTF-8 bytes (``model.<key>``)."""
    if vocab_size != ByteTokenizer.vocab_size:
        raise LaminaError(
            f"model.{key} reads UTF-8 bytes and needs the byte tokenizer (vocabulary {ByteTokenizer.vocab_size}), "
            f"got a vocabulary of {vocab_size}; set data.tokenizer=bytes and model.vocab_size=0, or model.{key}=null"
        )


class WordTokenizer:
    """Whitespace words with one ``<eos>`` per line: the PTB/WikiText convention.

    Words missing from the vocabulary map to ``<unk>``. Bytes that are not
    valid UTF-8 are decoded with replacement characters, since words are text.
    """

    name = "words"

    def __init__(self, vocab: Sequence[str]):
        vocab = list(vocab)
        if not all(isinstance(w, str) for w in vocab):
            raise LaminaError("word vocabulary must be a list of strings; rebuild the tokenizer from the corpus")
        if EOS not in vocab or UNK not in vocab:
            raise LaminaError(f"word vocabulary lacks {EOS} or {UNK}; rebuild the tokenizer from the corpus")
        if len(set(vocab)) != len(vocab):
            raise LaminaError("word vocabulary has duplicate entries; rebuild the tokenizer from the corpus")
        self.vocab = vocab
        self.stoi = {w: i for i, w in enumerate(vocab)}
        self.eos_id = self.stoi[EOS]
        self.unk_id = self.stoi[UNK]

    @classmethod
    def fit(cls, text: str) -> WordTokenizer:
        """Vocabulary of ``text``: ``<eos>``, ``<unk>``, then words by descending count, ties alphabetical."""
        counts = Counter(text.split())
        counts.pop(EOS, None)
        counts.pop(UNK, None)
        words = sorted(counts, key=lambda w: (-counts[w], w))
        return cls([EOS, UNK, *words])

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @staticmethod
    def _lines(text: str) -> list[str]:
        """Lines split on newline only; a final newline does not start a new line."""
        lines = text.split("\n")
        if lines[-1] == "":
            lines.pop()
        return lines

    def encode(self, data: bytes | str) -> torch.Tensor:
        """Text -> ids: each line's whitespace-separated words, then ``<eos>``."""
        if isinstance(data, bytes):
            data = data.decode("utf-8", errors="replace")
        get, unk, eos = self.stoi.get, self.unk_id, self.eos_id
        ids: list[int] = []
        for line in self._lines(data):
            ids.extend([get(w, unk) for w in line.split()])
            ids.append(eos)
        return torch.tensor(ids, dtype=torch.long)

    def encode_documents(self, docs: Sequence[bytes]) -> torch.Tensor:
        """Each document encoded (its lines give the ``<eos>`` ids), concatenated."""
        parts = [self.encode(d) for d in docs]
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)

    def decode(self, ids: torch.Tensor | Sequence[int]) -> bytes:
        """Ids -> UTF-8 text: words joined by spaces, ``<eos>`` as a newline."""
        out: list[str] = []
        line: list[str] = []
        for i in _as_list(ids):
            if not 0 <= i < len(self.vocab):
                raise IndexError(f"token id {i} is outside the vocabulary of {len(self.vocab)} words")
            if i == self.eos_id:
                out.append(" ".join(line) + "\n")
                line = []
            else:
                line.append(self.vocab[i])
        out.append(" ".join(line))
        return "".join(out).encode("utf-8")

    def to_dict(self) -> dict:
        return {"type": self.name, "vocab": list(self.vocab)}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WordTokenizer) and other.vocab == self.vocab

    def __hash__(self) -> int:
        return hash((self.name, len(self.vocab)))

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size})"


Tokenizer = ByteTokenizer | WordTokenizer


def tokenizer_from_dict(d: object) -> Tokenizer:
    """Rebuild a tokenizer from :meth:`to_dict` output (as stored in a checkpoint)."""
    kind = d.get("type") if isinstance(d, dict) else None
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "words":
        vocab = d.get("vocab")
        if not isinstance(vocab, list):
            raise LaminaError("word tokenizer dict has no 'vocab' list; the checkpoint's tokenizer entry is damaged")
        return WordTokenizer(vocab)
    raise LaminaError(
        f"unknown tokenizer entry {kind!r} (expected type 'bytes' or 'words'); "
        "the checkpoint may come from a newer lamina, so upgrade lamina"
    )
