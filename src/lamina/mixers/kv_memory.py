"""Key/value memory bookkeeping shared by the attention mixers (a helper module, not a mixer).

An attention memory is a tuple of per-token tensors ``[B, M, ...]`` (keys,
values, whatever else a mixer keeps per key) for the last ``M`` tokens, plus a
``[B, M]`` validity mask; empty slots are on the left. Each call attends over
``[memory ; segment]`` and keeps the last ``M`` entries of it (Transformer-XL's
segment recurrence, Dai et al. 2019, section 3.2).
"""

from __future__ import annotations

from typing import Optional

import torch

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
