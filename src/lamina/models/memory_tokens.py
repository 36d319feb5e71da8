"""Memory tokens: the Recurrent Memory Transformer's model-level state.

Bulatov, Kuratov & Burtsev 2022, "Recurrent Memory Transformer", section 3,
the decoder-only variant: ``m`` memory vectors are read at the start of every
segment and written at its end, so a segment's input embeddings are
``[read memory; tokens; write memory]`` (the same memory vectors at both
ends). Attention is causal, so the write positions see the whole segment; the
model's final hidden states there (after the final RMSNorm, the vectors the
output head reads) become the next segment's memory.

The state this module keeps is ``(memory [B, m, d], filled [B], started [B])``:
the current segment's memory in fp32, how many tokens of the current segment
have been read, and whether the memory has been written at least once (before
that, the learned initial memory is used, so the all-zeros state is the empty
one and the initial memory keeps receiving gradients). All rows share one
segment position: the streams are read in step.

Initialisation: the learned initial memory ``[m, d]`` is N(0, 0.02), like the
token embedding.
"""

from __future__ import annotations

import torch
from torch import nn

from lamina.errors import LaminaError

MemoryState = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class SegmentMemory(nn.Module):
    """The learned initial memory and the bookkeeping of read and write positions."""

    def __init__(self, tokens: int, d_model: int, segment_len: int | None):
        super().__init__()
        if tokens < 1:
            raise LaminaError(f"model.memory_tokens must be a positive integer (or 0: off), got {tokens}")
        if segment_len is None or segment_len < 1:
            raise LaminaError(
                f"model.memory_segment must be a positive integer when model.memory_tokens > 0, got {segment_len}"
            )
        self.tokens = tokens
        self.d_model = d_model
        self.segment_len = segment_len
        self.initial = nn.Parameter(torch.empty(tokens, d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.initial, mean=0.0, std=0.02)

    def init_state(self, batch: int, device=None) -> MemoryState:
        return (
            torch.zeros(batch, self.tokens, self.d_model, device=device, dtype=torch.float32),
            torch.zeros(batch, device=device, dtype=torch.long),
            torch.zeros(batch, device=device, dtype=torch.bool),
        )

    def state_size(self) -> int:
        """``m · d`` memory floats (the segment position and the written flag are bookkeeping, as attention's masks)."""
        return self.tokens * self.d_model

    def current(self, state: MemoryState) -> torch.Tensor:
        """The memory of the current segment, ``[B, m, d]``: written, or the learned initial one."""
        memory, _, started = state
        return torch.where(started[:, None, None], memory, self.initial.to(memory.dtype))

    @staticmethod
    def position(state: MemoryState) -> int:
        """Tokens of the current segment read so far (shared by every row)."""
        return int(state[1][0]) if state[1].numel() else 0

    def plan(self, position: int, length: int) -> list[tuple[int, int, bool, bool]]:
        """Cut ``length`` new tokens, starting ``position`` tokens into a segment, at segment ends.

        Returns ``(start, stop, read, write)`` per piece: ``read`` when the
        piece starts a segment (the read memory goes first), ``write`` when it
        completes one (the write memory goes last).
        """
        pieces, start = [], 0
        while start < length:
            stop = min(length, start + self.segment_len - position)
            pieces.append((start, stop, position == 0, position + stop - start == self.segment_len))
            position = (position + stop - start) % self.segment_len
            start = stop
        return pieces

    def advance(self, state: MemoryState, n: int, written: torch.Tensor | None) -> MemoryState:
        """The state after ``n`` more tokens; ``written`` is the new memory when a segment completed."""
        memory, filled, started = state
        if written is not None:
            return written.float(), torch.zeros_like(filled), torch.ones_like(started)
        return memory, filled + n, started
