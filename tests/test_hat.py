"""The Hierarchical Autoregressive Transformer: its word splitter, its model and its runs through the CLI."""

import random

import pytest
import torch

from lamina.data.words import split_words, starts_word, word_starts


# --------------------------------------------------------------------------- the word splitter


def split_streaming(data: bytes, max_len: int) -> list[bytes]:
    """The splitter one byte at a time through :func:`starts_word`."""
    words, prev, length = [], None, 0
    for byte in data:
        if starts_word(prev, byte, length, max_len):
            words.append(bytearray())
            length = 0
        words[-1].append(byte)
        prev, length = byte, length + 1
    return [bytes(w) for w in words]


def test_words_by_the_rule():
    text = "  def f(x):\n    return x_1 + été".encode()
    assert split_words(text, 16) == [
        b"  def", b" f", b"(", b"x", b")", b":", b"\n    return", b" x", b"_", b"1", b" ", b"+", " été".encode(),
    ]
    assert split_words(b"abcdefghij", 4) == [b"abcd", b"efgh", b"ij"]
    assert split_words(b"", 4) == []
    with pytest.raises(ValueError, match="max_len"):
        split_words(b"abc", 0)


def test_utf8_characters_are_cut_only_by_the_length_rule():
    text = "žluťoučký kůň úpěl ďábelské ódy 日本語のテキスト".encode()
    for word in split_words(text, 64):
        word.decode("utf-8")  # every word is whole characters
    assert b"".join(split_words(text, 5)) == text
    assert all(len(w) <= 5 for w in split_words(text, 5))


@pytest.mark.parametrize("max_len", [1, 3, 16])
def test_round_trip_random_and_invalid_bytes(max_len):
    rng = random.Random(max_len)
    for n in [1, 2, 7, 100, 1000]:
        data = bytes(rng.randrange(256) for _ in range(n))  # mostly invalid UTF-8
        words = split_words(data, max_len)
        assert b"".join(words) == data
        assert all(1 <= len(w) <= max_len for w in words)
        assert words == split_words(data, max_len)  # deterministic
        assert words == split_streaming(data, max_len)


@pytest.mark.parametrize("path", ["tinyshakespeare/input.txt", "ptb/ptb.char.valid.txt", "wikitext-2/valid.txt"])
def test_round_trip_corpora(shared_data, path):
    data = (shared_data / path).read_bytes()[:200_000]
    words = split_words(data, 16)
    assert b"".join(words) == data
    assert max(map(len, words)) <= 16
    assert 1.5 < len(data) / len(words) < 12  # words, not bytes nor lines (ptb-char spaces its letters)
    assert words[:2000] == split_streaming(b"".join(words[:2000]), 16)


@pytest.mark.parametrize("max_len", [2, 5, 16])
def test_chunked_word_starts_equal_streaming(max_len):
    rng = random.Random(7)
    alphabet = list(b"ab \n(.") + [0xC3, 0xA9, 0xFF, 256]  # 256: the byte tokenizer's eos id, punctuation
    ids = torch.tensor([[rng.choice(alphabet) for _ in range(60)] for _ in range(3)])
    # streaming truth, row by row
    truth = torch.zeros_like(ids, dtype=torch.bool)
    for b, row in enumerate(ids.tolist()):
        prev, length = None, 0
        for t, byte in enumerate(row):
            truth[b, t] = starts_word(prev, byte, length, max_len)
            length = 1 if truth[b, t] else length + 1
            prev = byte
    assert truth[:, 0].all() and not truth.all()
    prev = length = torch.zeros(3, dtype=torch.long)
    pieces, start = [], 0
    for size in [1, 7, 2, 13, 1, 30, 6]:
        starts, prev, length = word_starts(ids[:, start : start + size], prev, length, max_len)
        pieces.append(starts)
        start += size
    assert torch.equal(torch.cat(pieces, dim=1), truth)
