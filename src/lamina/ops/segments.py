"""A call placed on the stream's fixed segments, for the mixers that work segment by segment.

Infini-attention and the Block-Recurrent Transformer carry the per-token
tensors of the unfinished segment in their state, ``[B, size - 1, ...]`` with
a ``[B, size - 1]`` mask whose first slots are filled; :class:`Segments` lays
each call out so that every row's segments start at multiples of ``size``.
Tensor bookkeeping only (no modules, no parameters).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


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
