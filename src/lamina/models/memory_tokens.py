"""Memory tokens: the Recurrent Memory Transformer's model-level state.

Bulatov, Kuratov & Burtsev 2022, "Recurrent Memory Transformer", section 3,
the decoder-only variant: ``m`` memory vectors are read at the start of every
segment and written at its end, so a segment's input embeddings are
``[read memory; tokens; write memory]`` (the same memory vectors at both
ends). Attention is causal, so the write positions see the whole segment; the
model's final hidden states there (after the final RMSNorm, the vectors the
output head reads) become the next segment's memory.

The state this module keeps is ``(memory [B, m, d], filled [B], started [B])``
(:class:`MemoryTokensState`):
the current segment's memory in fp32, how many tokens of the current segment
have been read, and whether the memory has been written at least once (before
that, the learned initial memory is used, so the all-zeros state is the empty
one and the initial memory keeps receiving gradients). All rows share one
segment position: the streams are read in step (see
:mod:`lamina.models.segments`).

Initialisation: the learned initial memory ``[m, d]`` is N(0, 0.02), like the
token embedding.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from lamina.errors import LaminaError
from lamina.models.segments import SegmentMemory



class MemoryTokensState(NamedTuple):
    memory: torch.Tensor  # the current segment's memory [B, m, d], fp32
    filled: torch.Tensor  # [B] long: tokens of the current segment read
    started: torch.Tensor  # [B] bool: the memory has been written at least once


class MemoryTokens(SegmentMemory):
    """The learned initial memory; the same ``m`` vectors are read and written around each segment."""

    name = "memory tokens"
    off = "model.memory_tokens=0"

    def __init__(self, tokens: int, d_model: int, segment_len: int | None):
        if tokens < 1:
            raise LaminaError(f"model.memory_tokens must be a positive integer (or 0: off), got {tokens}")
        if segment_len is None or segment_len < 1:
            raise LaminaError(
                f"model.memory_segment must be a positive integer when model.memory_tokens > 0, got {segment_len}"
            )
        super().__init__(segment_len)
        self.tokens = tokens
        self.d_model = d_model
        self.initial = nn.Parameter(torch.empty(tokens, d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.initial, mean=0.0, std=0.02)

    def init_state(self, batch: int, device=None) -> MemoryTokensState:
        return MemoryTokensState(
            torch.zeros(batch, self.tokens, self.d_model, device=device, dtype=torch.float32),
            torch.zeros(batch, device=device, dtype=torch.long),
            torch.zeros(batch, device=device, dtype=torch.bool),
        )

    def state_size(self) -> int:
        """``m · d`` memory floats (the segment position and the written flag are bookkeeping, like masks)."""
        return self.tokens * self.d_model

    @property
    def extra_positions(self) -> int:
        return 2 * self.tokens

    def current(self, state: MemoryTokensState) -> torch.Tensor:
        """The memory of the current segment, ``[B, m, d]``: written, or the learned initial one."""
        memory = state.memory
        return torch.where(state.started[:, None, None], memory, self.initial.to(memory.dtype))

    def read(self, state: MemoryTokensState, model) -> tuple[torch.Tensor, None]:
        return self.current(state), None

    def write(self, state: MemoryTokensState) -> torch.Tensor:
        return self.current(state)

    def advance(self, state: MemoryTokensState, ids: torch.Tensor, written: torch.Tensor | None, model) -> MemoryTokensState:
        memory = state.memory if written is None else written.float()
        return MemoryTokensState(memory, *self.counters(state, ids.shape[1], written is not None))

    def describe(self) -> str:
        return f"memory tokens {self.tokens} (RMT), read and written every {self.segment_len} tokens"
