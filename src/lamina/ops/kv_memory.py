"""Key/value memory bookkeeping shared by the attention mixers and the models' memories.

An attention memory is a tuple of per-token tensors ``[B, M, ...]`` (keys,
values, whatever else a mixer keeps per key) for the last ``M`` tokens, plus a
``[B, M]`` validity mask; empty slots are on the left. Each call attends over
``[memory ; segment]`` and keeps the last ``M`` entries of it (Transformer-XL's
segment recurrence, Dai et al. 2019, section 3.2). A compressive memory
(Rae et al. 2020) is a second such memory, fed in groups of the entries that
leave the first: :func:`split_groups` and :func:`push`. Pure functions on tensors.
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


def keep_newest(valid: torch.Tensor, keep: int) -> torch.Tensor:
    """A memory's ``[B, M]`` validity (newest last) with only its newest ``keep`` slots still valid; the
    buffer keeps its size, so positions keep their distances."""
    if keep >= valid.shape[1]:
        return valid
    valid = valid.clone()
    valid[:, : valid.shape[1] - keep] = False
    return valid


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
