"""Data: named corpora (found, downloaded, verified, split), your own files, tokenizers, and stream batching.

The default corpus ``stdlib`` is this Python's own standard library, so
training works with no download; benchmark corpora come from the registry in
:mod:`lamina.data.corpora`; any other ``data.corpus`` is a file, directory or
glob of your own files (:mod:`lamina.data.files`), and :func:`load_files`
reads such files unsplit, for scoring.
"""

from __future__ import annotations

import torch

from lamina.data.batching import RandomWindows, StreamBatcher
from lamina.data.corpora import (
    CORPORA,
    DATA_DIR_ENV,
    SPLITS,
    Corpus,
    CorpusSpec,
    FileSpec,
    Source,
    SplitPart,
    cache_dir,
    corpus_names,
    load_corpus,
    path_bucket,
    stdlib_split,
)
from lamina.data.files import SPLIT_RULE, canonical_corpus, find_files, load_files
from lamina.data.tokenizers import ByteTokenizer, Tokenizer, WordTokenizer, tokenizer_from_dict
from lamina.errors import LaminaError

TOKENIZERS = ("bytes", "words")


def build_tokenizer(kind: str | None, corpus: Corpus) -> Tokenizer:
    """The tokenizer ``kind`` (None: the corpus default); ``words`` is fit on the train split."""
    kind = corpus.default_tokenizer if kind is None else kind
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "words":
        docs = corpus.documents("train")
        return WordTokenizer.fit("\n".join(d.decode("utf-8", errors="replace") for d in docs))
    raise LaminaError(f"unknown tokenizer {kind!r}; choose one of {', '.join(TOKENIZERS)}")


def encode_split(tokenizer: Tokenizer, corpus: Corpus, split: str) -> torch.Tensor:
    """All documents of ``split`` as one 1-D long tensor."""
    return tokenizer.encode_documents(corpus.documents(split))


def metric_unit(corpus: Corpus, tokenizer: Tokenizer) -> str:
    """Unit of the reported metric: ``byte`` (bits/byte), ``char`` (bits/char) or ``word`` (perplexity).

    The corpus unit holds when the tokenizer is the corpus default (so PTB-char
    with words gives bits per character); otherwise the tokenizer's own unit:
    bytes give bits per byte (PTB-char's raw bytes include the separating
    spaces, so they are not characters) and words give perplexity.
    """
    if tokenizer.name == corpus.default_tokenizer:
        return corpus.unit
    return "byte" if tokenizer.name == "bytes" else "word"


__all__ = [
    "CORPORA",
    "DATA_DIR_ENV",
    "SPLITS",
    "SPLIT_RULE",
    "TOKENIZERS",
    "ByteTokenizer",
    "Corpus",
    "CorpusSpec",
    "FileSpec",
    "Source",
    "SplitPart",
    "RandomWindows",
    "StreamBatcher",
    "Tokenizer",
    "WordTokenizer",
    "build_tokenizer",
    "cache_dir",
    "canonical_corpus",
    "corpus_names",
    "encode_split",
    "find_files",
    "load_corpus",
    "load_files",
    "metric_unit",
    "path_bucket",
    "stdlib_split",
    "tokenizer_from_dict",
]
