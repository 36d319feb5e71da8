"""Transformer-XL's compressed memory: hidden states leaving the memory, pooled ``rate`` to one.

Rae et al. 2020, "Compressive Transformers for Long-Range Sequence
Modelling", section 3. Hidden states that leave the memory are not dropped
but compressed ``rate`` (the paper's ``c``) to one, by mean or max pooling
over time (section 3.1's parameter-free functions,
:func:`lamina.ops.pooling.pool_groups`), into a second first-in first-out
memory of ``slots`` entries. This class keeps that memory and says, per
query, which compressed slot it sees at which rank; the attention layer
(:class:`lamina.mixers.xl.TransformerXL`) projects the slots to keys and
values and scores their distances. The paper's best compression, a
convolution trained by the auxiliary attention-reconstruction loss (section
3.2), and its dilated-convolution and most-used variants are left out. Where
we depart from the paper, and why:

- Groups are fixed in the stream: the ``c``-th, ``2c``-th, ... state to leave
  the memory closes a group. States that have left but do not yet fill a group
  (fewer than ``c``) wait in the state, in ``c - 1`` pending slots, and no
  query reads them until their group is compressed. The paper evicts a whole
  segment (a multiple of ``c``) at once; with segments and ``mem_len``
  multiples of ``c`` nothing waits at a segment's end, and with any split the
  groups are the same, so carried chunks stay exact.
- Positions: as the authors' code, which concatenates the compressed memory
  before the memory, each compressed slot counts as one position, just
  before the oldest memory slot: the newest compressed slot is at distance
  ``mem_len + 1 + i`` from the ``i``-th query of a call, the next one ``+1``,
  and so on; ``clamp_len`` caps these distances like any other.
- ``same_length``: every query sees itself, the ``mem_len`` states before it
  and the newest ``slots`` groups of the states before those, the newest at
  distance ``mem_len + 1``. States thus leave a query's view token by token,
  and are compressed within the call as soon as their group is complete: one
  call computes what one-token segments compute, and chunks are exact. Without
  it, as in the paper, a call is a segment: its queries read the compressed
  memory as it was when the call began, and chunks equal the full run only
  while the memory covers them.
- A memory fitted to another ``mem_len`` (:meth:`lamina.mixers.kv_memory.KVMemoryMixer.memory_length`)
  keeps the compressed memory and the pending states as they are; states
  trimmed from a shorter memory are dropped, not compressed, and the empty
  slots of a longer one count as positions between the compressed memory and
  the states until they fill.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from lamina.ops import kv_memory
from lamina.ops.pooling import pool_groups


class CompressedState(NamedTuple):
    memory: torch.Tensor  # the compressed slots [B, slots, d], fp32 or wider
    valid: torch.Tensor  # [B, slots] bool, newest last
    pending: torch.Tensor  # states waiting for their group [B, rate - 1, d]
    pending_valid: torch.Tensor  # [B, rate - 1] bool


class CompressedView(NamedTuple):
    """What the queries of one call see of the compressed memory."""

    slots: torch.Tensor  # [B, N, d]: the compressed vectors a query may read
    rank: torch.Tensor  # [B, T, N] long: each slot's rank for each query, newest 0 (unseen slots: any)
    visible: torch.Tensor  # [B, T, N] bool
    offset: torch.Tensor  # [T] long: added to each query's ranks (its place in the call, without same_length)
    span: int  # distances ``M + 1 .. M + span`` cover every visible rank plus offset


class CompressiveMemory:
    """A compressed memory of ``slots`` entries fed ``rate`` to one with ``pool`` (see the module docstring)."""

    def __init__(self, slots: int, rate: int, pool: str, same_length: bool):
        self.slots, self.rate, self.pool, self.same_length = slots, rate, pool, same_length

    def init_state(self, batch: int, width: int, device=None, dtype=None) -> CompressedState:
        """Empty compressed and pending slots, each with its validity."""
        return CompressedState(*(
            t for n in (self.slots, self.rate - 1)
            for t in (torch.zeros(batch, n, width, device=device, dtype=dtype),
                      torch.zeros(batch, n, device=device, dtype=torch.bool))
        ))

    def size(self, width: int) -> int:
        """Floats per sequence: the compressed and the pending slots."""
        return (self.slots + self.rate - 1) * width

    def advance(
        self, leaving: torch.Tensor, leaving_valid: torch.Tensor, state: CompressedState
    ) -> tuple[CompressedView, CompressedState]:
        """The view of a call whose ``T`` queries see states ``leaving [B, T, d]`` leave the memory, one each
        before it (``leaving_valid [B, T]``), and the state after they have left."""
        B, T = leaving_valid.shape
        rate, C = self.rate, self.slots
        cmem, cvalid = state.memory, state.valid
        leaving = torch.cat([state.pending, leaving.to(state.pending.dtype)], 1)
        leaving_valid = torch.cat([state.pending_valid, leaving_valid], 1)
        (grouped,), complete, (pending,), pvalid = kv_memory.split_groups((leaving,), leaving_valid, rate)
        groups = pool_groups(grouped, rate, self.pool)
        (new_cmem,), new_cvalid = kv_memory.push((cmem,), cvalid, (groups,), complete)

        # each query reads compressed slots newest first: the one of rank r at distance M + 1 + r (+ i, the
        # query's place in the call, without same_length, where the call's earlier tokens come in between)
        newer = cvalid.flip(1).cumsum(1).flip(1) - cvalid.long()  # valid carried slots newer than each slot
        device = leaving.device
        if self.same_length:
            gone = F.pad(leaving_valid.cumsum(1), (1, 0))[:, rate - 1 : rate - 1 + T]  # states gone before query i
            seen = (gone // rate)[:, :, None]  # this call's groups complete by query i
            g = torch.arange(groups.shape[1], device=device)
            rank = torch.cat([newer[:, None, :] + seen, seen - 1 - g], -1)
            visible = torch.cat([cvalid[:, None, :].expand(B, T, C), g < seen], -1) & (rank < C)
            slots = torch.cat([cmem, groups.to(cmem.dtype)], 1)
            view = CompressedView(slots, rank, visible, torch.zeros(T, dtype=torch.long, device=device), C)
        else:
            view = CompressedView(
                slots=cmem, rank=newer[:, None, :].expand(B, T, C), visible=cvalid[:, None, :].expand(B, T, C),
                offset=torch.arange(T, device=device), span=T + C - 1,
            )
        return view, CompressedState(new_cmem, new_cvalid, pending, pvalid)
