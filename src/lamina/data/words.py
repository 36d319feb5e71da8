"""A causal word splitter on bytes, for byte models that work in words (HAT).

Every byte belongs to one of three classes:

- space: the ASCII whitespace bytes ``\\t \\n \\v \\f \\r`` and the space;
- letter: ASCII letters and digits, and every byte >= 0x80 (UTF-8 lead and
  continuation bytes, and bytes that are not valid UTF-8);
- punctuation: every other value (the remaining ASCII bytes, control bytes
  included, and any id >= 256, such as the byte tokenizer's ``eos_id``).

Byte ``t`` starts a new word when it is the first byte of the stream, when the
current word already holds ``max_len`` bytes, or when

- it is punctuation (each punctuation byte is a word of its own), or
- it is a space and the byte before it is not (a run of spaces begins a word), or
- it is a letter and the byte before it is punctuation.

So a word is a run of spaces followed by a run of letters (either may be
empty), or one punctuation byte, cut every ``max_len`` bytes: ``b"  def f(x):"``
is ``[b"  def", b" f", b"(", b"x", b")", b":"]``. Since bytes >= 0x80 are
letters, a UTF-8 character is only ever cut by the ``max_len`` rule.

Whether byte ``t`` starts a word depends on byte ``t - 1``, byte ``t`` and the
length of the current word only (:func:`starts_word`), so a model can decide
boundaries causally, one byte at a time; :func:`word_starts` is the same rule
on a ``[B, T]`` tensor with the ``(previous byte, length)`` carried between
calls. Any byte string splits, and the words concatenate back to it.
"""

from __future__ import annotations

import torch

SPACE, LETTER, PUNCT = 0, 1, 2
_SPACES = b" \t\n\v\f\r"


def byte_class(byte: int) -> int:
    """:data:`SPACE`, :data:`LETTER` or :data:`PUNCT` for one byte value (or token id)."""
    if byte >= 256:
        return PUNCT
    if byte in _SPACES:
        return SPACE
    if byte >= 0x80 or chr(byte).isalnum():
        return LETTER
    return PUNCT


_CLASS_TABLE = torch.tensor([byte_class(b) for b in range(256)], dtype=torch.long)


def starts_word(prev_byte: int | None, byte: int, length_so_far: int, max_len: int) -> bool:
    """Does ``byte`` start a new word, after ``prev_byte`` (None: stream start) in a word of ``length_so_far`` bytes?"""
    if prev_byte is None or length_so_far == 0 or length_so_far >= max_len:
        return True
    cls, prev = byte_class(byte), byte_class(prev_byte)
    return cls == PUNCT or (cls == SPACE and prev != SPACE) or (cls == LETTER and prev == PUNCT)


def classes(ids: torch.Tensor) -> torch.Tensor:
    """Byte classes of a tensor of ids (ids >= 256 are punctuation)."""
    table = _CLASS_TABLE.to(ids.device)
    return torch.where(ids < 256, table[ids.clamp(0, 255)], PUNCT)


def word_starts(
    ids: torch.Tensor, prev: torch.Tensor, length: torch.Tensor, max_len: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`starts_word` over ``ids [B, T]`` -> ``(starts [B, T] bool, new prev [B], new length [B])``.

    ``prev [B]`` is the byte before ``ids[:, 0]`` and ``length [B]`` the length
    of the word it ends (0 at the stream start). Without the ``max_len`` rule a
    start depends on two bytes only ("natural" starts); a run between natural
    starts is then cut every ``max_len`` bytes, counted from the run's start,
    or for the run that continues from the previous call, from ``length``
    bytes before ``ids[:, 0]``.
    """
    B, T = ids.shape
    if T == 0:
        return ids.new_zeros(B, 0, dtype=torch.bool), prev, length
    cls = classes(ids)
    before = torch.cat([classes(prev)[:, None], cls[:, :-1]], dim=1)
    natural = (cls == PUNCT) | ((cls == SPACE) & (before != SPACE)) | ((cls == LETTER) & (before == PUNCT))
    natural[:, 0] |= length == 0
    pos = torch.arange(T, device=ids.device).expand(B, T)
    run_start = torch.where(natural, pos, -length[:, None]).cummax(dim=1).values  # the run's start, maybe < 0
    offset = pos - run_start  # bytes of the run before this one
    starts = offset % max_len == 0
    new_length = offset[:, -1] % max_len + 1
    return starts, ids[:, -1].clone(), new_length


def split_words(data: bytes, max_len: int = 16) -> list[bytes]:
    """``data`` cut into words by the rule above; ``b"".join(split_words(data)) == data``."""
    if max_len < 1:
        raise ValueError(f"max_len must be a positive integer, got {max_len}")
    if not data:
        return []
    ids = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.long)[None]
    zero = torch.zeros(1, dtype=torch.long)
    starts, _, _ = word_starts(ids, zero, zero, max_len)
    edges = starts[0].nonzero().flatten().tolist() + [len(data)]
    return [data[a:b] for a, b in zip(edges[:-1], edges[1:])]
