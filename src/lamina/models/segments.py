"""The interface of a model-level segment memory (memory tokens, HMT) and its shared bookkeeping.

A segment memory reads a model's token stream in segments of ``segment_len``
tokens. Each segment runs through the model's own blocks as ``[read; tokens;
write]``: ``read`` embeddings go before the segment's first token, ``write``
embeddings after its last, and the model's final hidden states at the write
positions (after the final RMSNorm) are handed back to the memory, which
makes the next segment's read and write embeddings from them.

A call may hold any number of tokens: :meth:`SegmentMemory.plan` cuts it at
segment ends, and pieces of a segment accumulate in the layers' states until
it completes. The memory's state is a named tuple of tensors with the fields
``filled [B]`` and ``started [B]``: tokens of the current segment read so far
(all rows share one segment position: the streams are read in step) and
whether a segment has completed, so the all-zeros state is the empty one.
"""

from __future__ import annotations

import abc

import torch
from torch import nn

State = tuple  # a NamedTuple with ``filled`` and ``started`` fields


class SegmentMemory(nn.Module, abc.ABC):
    """Read and write embeddings around each segment; subclasses say which, and how they change."""

    name: str  # what the memory is called in descriptions
    off: str  # the override that turns it off, for error messages

    def __init__(self, segment_len: int):
        super().__init__()
        self.segment_len = segment_len

    @abc.abstractmethod
    def init_state(self, batch: int, device=None) -> State:
        """The empty state (all zeros), with ``filled`` and ``started``."""

    @abc.abstractmethod
    def state_size(self) -> int:
        """Floats carried per sequence."""

    @property
    @abc.abstractmethod
    def extra_positions(self) -> int:
        """Most positions a segment's run adds to its tokens (read and write embeddings)."""

    @abc.abstractmethod
    def read(self, state: State, model) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(embeddings [B, r, d], validity [B, r] or None: all valid)`` read before a segment's first token.

        ``model`` is the LM, for its ``embed_tokens`` and ``encode``.
        """

    @abc.abstractmethod
    def write(self, state: State) -> torch.Tensor:
        """Embeddings ``[B, w, d]`` read after a segment's last token (the outputs there go to :meth:`advance`)."""

    @abc.abstractmethod
    def advance(self, state: State, ids: torch.Tensor, written: torch.Tensor | None, model) -> State:
        """The state after a piece's token ids ``[B, n]``.

        ``written`` holds the final hidden states at the write positions when
        the piece completed a segment, else None.
        """

    @abc.abstractmethod
    def describe(self) -> str:
        """One line for ``lamina info``."""

    @staticmethod
    def position(state: State) -> int:
        """Tokens of the current segment read so far (shared by every row).

        A read back to the host, and so a graph break under ``torch.compile``: it decides where a call is cut
        into segments (:meth:`plan`), that is, the shapes of the pieces the model runs.
        """
        return int(state.filled[0]) if state.filled.numel() else 0

    def plan(self, position: int, length: int) -> list[tuple[int, int, bool, bool]]:
        """Cut ``length`` new tokens, starting ``position`` tokens into a segment, at segment ends.

        Returns ``(start, stop, read, write)`` per piece: ``read`` when the
        piece starts a segment (the read embeddings go first), ``write`` when it
        completes one (the write embeddings go last).
        """
        pieces, start = [], 0
        while start < length:
            stop = min(length, start + self.segment_len - position)
            pieces.append((start, stop, position == 0, position + stop - start == self.segment_len))
            position = (position + stop - start) % self.segment_len
            start = stop
        return pieces

    @staticmethod
    def counters(state: State, n: int, completed: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(filled, started)`` after ``n`` more tokens, ``completed`` when they end a segment."""
        filled, started = state.filled, state.started
        if completed:
            return torch.zeros_like(filled), torch.ones_like(started)
        return filled + n, started
