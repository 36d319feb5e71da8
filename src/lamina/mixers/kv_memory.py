"""Key/value memory bookkeeping shared by the attention mixers (a helper module, not a mixer).

An attention memory is a tuple of per-token tensors ``[B, M, ...]`` (keys,
values, whatever else a mixer keeps per key) for the last ``M`` tokens, plus a
``[B, M]`` validity mask; empty slots are on the left. Each call attends over
``[memory ; segment]`` and keeps the last ``M`` entries of it (Transformer-XL's
segment recurrence, Dai et al. 2019, section 3.2). A compressive memory
(Rae et al. 2020) is a second such memory, fed in groups of the entries that
leave the first: :func:`split_groups` and :func:`push`.

:class:`Segments` serves the mixers that work on fixed segments of the stream
(Infini-attention, the Block-Recurrent Transformer): their state carries the
per-token tensors of the unfinished segment, ``[B, size - 1, ...]`` with a
``[B, size - 1]`` mask whose first slots are filled, and each call is laid out
so that every row's segments start at multiples of ``size``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

Tensors = tuple[torch.Tensor, ...]


def extend(memory: Tensors, segment: Tensors, valid: torch.Tensor) -> tuple[Tensors, torch.Tensor]:
    """``([memory ; segment]`` per tensor along time, in the segment's dtype, and their ``[B, M+T]`` validity)."""
    B, T = segment[0].shape[:2]
    joined = tuple(torch.cat([m.to(s.dtype), s], dim=1) for m, s in zip(memory, segment))
    valid = torch.cat([valid, torch.ones(B, T, dtype=torch.bool, device=valid.device)], dim=1)
    return joined, valid


def fit(memory: Tensors, valid: torch.Tensor, M: int) -> tuple[Tensors, torch.Tensor]:
    """A carried memory trimmed to its last ``M`` slots, or left-padded with empty slots up to ``M``.

    For mixers whose memory length may change between calls (a longer memory at evaluation).
    """
    have = valid.shape[1]
    if have >= M:
        return tuple(t[:, have - M :] for t in memory), valid[:, have - M :]
    pad = M - have
    padded = tuple(torch.cat([t.new_zeros(t.shape[0], pad, *t.shape[2:]), t], dim=1) for t in memory)
    return padded, torch.cat([valid.new_zeros(valid.shape[0], pad), valid], dim=1)


def keep_last(memory: Tensors, joined: Tensors) -> Tensors:
    """The new memory: the last ``M`` entries of each joined tensor, in the dtype of the memory it replaces."""
    M = memory[0].shape[1]
    return tuple(j[:, j.shape[1] - M :].to(m.dtype) for m, j in zip(memory, joined))


def keep_newest(state: Tensors, valid_index: int, keep: int) -> Tensors:
    """``state`` with only the newest ``keep`` slots of its memory still valid (``state[valid_index]`` is the
    memory's ``[B, M]`` validity, newest last); the buffer keeps its size, so positions keep their distances."""
    valid = state[valid_index]
    if keep >= valid.shape[1]:
        return state
    valid = valid.clone()
    valid[:, : valid.shape[1] - keep] = False
    return (*state[:valid_index], valid, *state[valid_index + 1 :])


def causal_mask(valid: torch.Tensor, T: int, window: Optional[int]) -> torch.Tensor:
    """``[B, 1, T, K]`` boolean over keys ``[memory ; segment]`` (``K = M + T``, ``valid`` of shape ``[B, K]``).

    A query sees a key that is not after it, is inside its ``window`` (the
    query included) and fills a real memory slot.
    """
    K = valid.shape[1]
    query = torch.arange(T, device=valid.device)[:, None] + (K - T)
    key = torch.arange(K, device=valid.device)[None, :]
    allowed = key <= query
    if window is not None:
        allowed = allowed & (query - key < window)
    return (allowed[None] & valid[:, None, :])[:, None]


class Segments:
    """A call of ``T`` tokens placed on the stream's segments of ``size`` tokens.

    ``filled`` (``[B, size - 1]`` bool, the first ``count`` slots set) marks
    the tokens of the unfinished segment already read. Each row's layout
    ``[B, n * size, ...]`` starts at the first token of that segment and holds
    ``[unfinished segment ; call]``: segment ``j`` of every row is
    ``[j * size, (j + 1) * size)``, a token's position inside its segment is
    its layout index modulo ``size``, and slots after a row's last token are
    zeros. Rows may be at different points of their segments (padding and
    document starts move them apart).

    Work per segment (local attention, reading a memory) has two shapes. A
    long call (``T >= size``) lays its queries out too and handles whole
    segments at once. A short call (decoding) keeps its ``T`` queries, each
    masked to its own segment, so that a decoded token costs ``O(size)``
    rather than a segment of queries.
    """

    def __init__(self, filled: torch.Tensor, T: int, size: int):
        self.size, self.T = size, T
        self.short = T < size
        self.count = filled.sum(1)  # [B]: tokens of the unfinished segment
        self.end = self.count + T  # [B]: tokens of each row's layout
        # one host sync for the layout's length: a bound instead (size - 1 + T) would pay a segment of padding
        self._longest = int(self.count.max()) + T
        self.n = -(-self._longest // size)
        index = torch.arange(self.n * size, device=filled.device)
        self.positions = index % size  # [n * size]: position inside the segment
        self.real = index < self.end[:, None]  # [B, n * size]
        self._call_index = self.count[:, None] + torch.arange(T, device=filled.device)  # [B, T]: layout index
        self.call_positions = self._call_index % size  # [B, T]
        from_call = (size - 1) + index - self.count[:, None]
        self._source = torch.where(index < self.count[:, None], index, from_call).clamp(max=size - 2 + T)
        self._rows = torch.arange(filled.shape[0], device=filled.device)[:, None]

    def layout(self, call: torch.Tensor, unfinished: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[unfinished ; call]`` laid out as ``[B, n * size, ...]``, in the call's dtype.

        ``unfinished`` (``[B, size - 1, ...]``, the state's slots) is ``None``
        for what the state does not keep (queries): zeros in its slots.
        """
        if unfinished is None:
            unfinished = call.new_zeros(call.shape[0], self.size - 1, *call.shape[2:])
        joined = torch.cat([unfinished.to(call.dtype), call], dim=1)
        return _masked(joined[self._rows, self._source], self.real)

    def segments(self, laid: torch.Tensor) -> torch.Tensor:
        """``[B, n * size, ...]`` -> ``[B, n, size, ...]``."""
        return laid.view(laid.shape[0], self.n, self.size, *laid.shape[2:])

    def complete(self) -> torch.Tensor:
        """``[B, n]`` bool: segment ``j`` of the row ends inside this call (its memory update is due)."""
        ends = (torch.arange(self.n, device=self.end.device) + 1) * self.size
        return ends[None, :] <= self.end[:, None]

    def any_complete(self, j: int) -> bool:
        """Whether some row completes segment ``j`` in this call (known on the host: work for none can be skipped)."""
        return (j + 1) * self.size <= self._longest

    def unfinished(self, laid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The segment left unfinished after the call: its slots ``[B, size - 1, ...]`` (zeros beyond) and mask."""
        slot = torch.arange(self.size - 1, device=laid.device)
        start = self.end // self.size * self.size
        filled = slot[None, :] < (self.end - start)[:, None]
        return _masked(laid[self._rows, (start[:, None] + slot).clamp(max=laid.shape[1] - 1)], filled), filled

    def query_segments(self, q: torch.Tensor) -> list[torch.Tensor]:
        """Per segment of the layout, the queries ``[B, L, ...]`` of the call ``q [B, T, ...]`` that may lie in it.

        A long call gives each segment's rows of the laid-out queries, a
        short call all its queries for every segment; :meth:`from_segments`
        takes each query's answer from its own segment.
        """
        if self.short:
            return [q] * self.n
        return list(self.segments(self.layout(q)).unbind(1))

    def from_segments(self, answers: list[torch.Tensor]) -> torch.Tensor:
        """Answers to :meth:`query_segments`, one per segment, -> the call's ``[B, T, ...]``."""
        if not self.short:
            return self._call(torch.cat(answers, dim=1))
        segment = self._call_index // self.size
        out = answers[0]
        for j, answer in enumerate(answers[1:], start=1):
            out = torch.where((segment == j).view(*segment.shape, *([1] * (out.dim() - 2))), answer, out)
        return out

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Causal softmax attention inside segments: the call's ``q [B, T, H, D]`` against laid-out ``k, v``.

        Each query sees the keys of its own segment up to itself. Returns ``[B, T, H, D]``.
        """
        if self.short:
            key = torch.arange(k.shape[1], device=k.device)
            query = self._call_index[..., None]
            allowed = (key <= query) & (key // self.size == query // self.size)  # [B, T, n * size]
            y = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=allowed[:, None]
            )
            return y.transpose(1, 2)
        q = self.layout(q)
        B, L, H, D = q.shape
        q, k, v = (self.segments(t).flatten(0, 1).transpose(1, 2) for t in (q, k, v))  # [B n, H, size, D]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self._call(y.transpose(1, 2).reshape(B, L, H, -1))

    def _call(self, laid: torch.Tensor) -> torch.Tensor:
        """The call's own positions of a layout: ``[B, T, ...]``."""
        return laid[self._rows, self._call_index]


def _masked(t: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``t [B, L, ...]`` with the positions where ``keep [B, L]`` is False set to zero."""
    return t * keep.view(*keep.shape, *([1] * (t.dim() - 2))).to(t.dtype)


def compact(memory: Tensors, valid: torch.Tensor, *, left: bool = False) -> tuple[Tensors, torch.Tensor]:
    """The valid slots moved, in order, to the right end (``left``: the left end); the others empty (zeros)."""
    key = (~valid if left else valid).to(torch.uint8)
    order = torch.argsort(key, dim=1, stable=True)
    valid = valid.gather(1, order)
    packed = []
    for t in memory:
        shape = (*order.shape, *([1] * (t.dim() - 2)))
        t = t.gather(1, order.view(shape).expand_as(t))
        packed.append(torch.where(valid.view(shape), t, torch.zeros((), dtype=t.dtype, device=t.device)))
    return tuple(packed), valid


def push(memory: Tensors, valid: torch.Tensor, new: Tensors, new_valid: torch.Tensor) -> tuple[Tensors, torch.Tensor]:
    """A first-in first-out memory after the valid entries of ``new`` arrive: its last ``M`` entries, in its dtype."""
    joined = tuple(torch.cat([m, n.to(m.dtype)], dim=1) for m, n in zip(memory, new))
    joined, valid = compact(joined, torch.cat([valid, new_valid], dim=1))
    return fit(joined, valid, memory[0].shape[1])


def split_groups(
    stream: Tensors, valid: torch.Tensor, rate: int
) -> tuple[Tensors, torch.Tensor, Tensors, torch.Tensor]:
    """The valid entries of ``stream [B, N, ...]``, in order, cut into groups of ``rate``.

    Returns ``(grouped, complete, rest, rest_valid)``: ``grouped`` holds the
    entries packed to the left, ``[B, G * rate, ...]`` with ``G = N // rate``,
    so that group ``g`` is slots ``[g * rate, (g + 1) * rate)``; ``complete``
    (``[B, G]``) marks the groups that are full. The fewer than ``rate``
    entries left over come back as a memory of ``rate - 1`` slots
    (``rest``, ``rest_valid``), to open the next call's first group.
    """
    packed, packed_valid = compact(stream, valid, left=True)
    N = valid.shape[1]
    G = N // rate
    count = valid.sum(1, keepdim=True)
    full = count - count % rate  # entries in complete groups
    slot = torch.arange(N, device=valid.device)[None]
    complete = slot[:, :G] * rate < full
    rest, rest_valid = compact(packed, packed_valid & (slot >= full))
    rest, rest_valid = fit(rest, rest_valid, rate - 1)
    return tuple(t[:, : G * rate] for t in packed), complete, rest, rest_valid
