"""Transformer-XL attention: a memory of past hidden states and relative positions.

Dai et al. 2019, "Transformer-XL", section 3.2 (segment recurrence) and 3.3
(relative positional encodings). The state is this layer's *inputs* (hidden
states) of the last ``mem_len`` tokens, fp32, with a validity mask. Keys and
values are computed from ``[memory; x]`` with the current weights, queries from
``x``, and the score of query ``i`` and key ``j`` is

    q_i·k_j + q_i·W_R R_{i-j} + u·k_j + v·W_R R_{i-j}      (all / sqrt(head_dim))

with ``R`` the sinusoid of the distance, ``W_R`` a learned projection and
``u``, ``v`` learned per-head global biases. ``u`` and ``v`` start at zero: the
model then starts from plain content and position terms, with no arbitrary
preference for some keys or distances, and learns the biases from there (their
gradients are not zero at zero). Distances beyond ``clamp_len`` use
``R_{clamp_len}``. With ``same_length`` every query attends to the same span,
itself and the ``mem_len`` tokens before it (the span the first query of a
segment has), as in the paper's evaluation; the authors' code gives one
position fewer, we keep the whole span the memory holds so that chunks stay
exact.

The paper's stop-gradient on the memory is the training loop's
:func:`~lamina.mixers.base.detach_state` between segments; inside one call
the carried state keeps its graph, so every form gives the same gradients.
``mem_len`` is read at every call: :meth:`lamina.models.lm.LM.memory` may
lengthen it for evaluation, and a carried memory of another length is
trimmed or left-padded with empty slots.

Compressive memory (``cmem_len > 0``): Rae et al. 2020, "Compressive
Transformers for Long-Range Sequence Modelling", section 3. Hidden states that
leave the memory are not dropped but compressed ``cmem_rate`` (the paper's
``c``) to one, by mean or max pooling over time (``compress``; section 3.1's
parameter-free functions, :func:`lamina.ops.pooling.pool_groups`), into a
second first-in first-out memory of ``cmem_len`` slots, and queries attend over
``[compressed memory; memory; segment]`` with keys and values from the current
weights. The paper's best compression, a convolution trained by the auxiliary
attention-reconstruction loss (section 3.2), and its dilated-convolution and
most-used variants are left out. Where we depart from the paper, and why:

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
  and the newest ``cmem_len`` groups of the states before those, the newest at
  distance ``mem_len + 1``. States thus leave a query's view token by token,
  and are compressed within the call as soon as their group is complete: one
  call computes what one-token segments compute, and chunks are exact. Without
  it, as in the paper, a call is a segment: its queries read the compressed
  memory as it was when the call began, and chunks equal the full run only
  while the memory covers them.
- A memory fitted to another ``mem_len`` (:meth:`lamina.models.lm.LM.memory`)
  keeps ``cmem_len`` and ``cmem_rate``; the compressed memory and the pending
  states are carried as they are, states trimmed from a shorter memory are
  dropped, not compressed, and the empty slots of a longer one count as
  positions between the compressed memory and the states until they fill.

State: memory ``[B, mem_len, d]``, compressed memory ``[B, cmem_len, d]`` and
pending states ``[B, cmem_rate - 1, d]`` in fp32, each with a validity mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lamina.errors import LaminaError
from lamina.mixers import kv_memory
from lamina.mixers.base import Mixer, State, register
from lamina.ops.pooling import POOLS, pool_groups


@dataclass
class XLOptions:
    heads: int = 4
    mem_len: int = 0  # past hidden states carried across segments (0: none)
    clamp_len: Optional[int] = None  # distances beyond it use R_{clamp_len} (None: no clamping)
    same_length: bool = False  # every query attends to itself and the mem_len tokens before it
    cmem_len: int = 0  # compressed memory slots for states leaving the memory (0: none, they are dropped)
    cmem_rate: int = 3  # states pooled into one compressed slot (the paper's c)
    compress: str = "mean"  # the pooling that compresses them: mean or max


def sinusoid(distances: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """``[N]`` distances -> ``[N, dim]`` sinusoid embeddings (sines, then cosines), as in Vaswani et al."""
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, device=distances.device, dtype=torch.float64) / dim))
    angles = distances.to(torch.float64)[:, None] * inv_freq[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1).to(dtype)


def rel_shift(scores: torch.Tensor) -> torch.Tensor:
    """``[..., T, L]`` scores by reversed distance (column ``c`` is distance ``L-1-c``) -> by key.

    The pad-and-reshape trick: pad one zero column on the left, read the
    buffer as ``[L+1, T]``, drop its first row and read the rest as
    ``[T, L]``. Entry ``(i, j)`` then holds distance ``L-T+i-j`` for every key
    ``j <= L-T+i``; later keys hold junk and must be masked.
    """
    *lead, T, L = scores.shape
    padded = F.pad(scores, (1, 0)).view(*lead, L + 1, T)
    return padded[..., 1:, :].reshape(*lead, T, L)


@register("xl")
class TransformerXL(Mixer):
    Options = XLOptions
    forms = ("recurrent", "parallel")
    memory_valid = 1  # where the state holds its memory's validity (kv_memory.keep_newest)

    def __init__(self, d_model: int, options: XLOptions, layer_idx: int = 0, n_layers: int = 1):
        super().__init__(d_model, options, layer_idx, n_layers)
        if d_model % options.heads or d_model % 2:
            raise LaminaError(
                f"xl: d_model {d_model} must be even and split into heads={options.heads} equal heads; "
                "change model.d_model or the heads option"
            )
        if options.cmem_len and not options.mem_len:
            raise LaminaError(
                f"xl: cmem_len needs mem_len > 0 (the compressed memory is fed by states leaving the memory), "
                f"got cmem_len={options.cmem_len}, mem_len={options.mem_len}; set mem_len or cmem_len: 0"
            )
        if options.compress not in POOLS:
            raise LaminaError(f"xl: compress must be one of {', '.join(POOLS)}, got {options.compress!r}")
        self.heads = options.heads
        self.head_dim = d_model // options.heads
        self.mem_len = options.mem_len
        self.cmem_len = options.cmem_len
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.kv = nn.Linear(d_model, 2 * d_model, bias=False)
        self.r = nn.Linear(d_model, d_model, bias=False)  # W_R
        self.u = nn.Parameter(torch.zeros(self.heads, self.head_dim))
        self.v = nn.Parameter(torch.zeros(self.heads, self.head_dim))
        self.out = nn.Linear(d_model, d_model, bias=False)

    def init_state(self, batch: int, device=None, dtype=None) -> State:
        """Memory and validity; with ``cmem_len``, then compressed memory and pending states, each with validity."""
        dtype = torch.float64 if dtype == torch.float64 else torch.float32
        slots = (self.mem_len, self.cmem_len, self.options.cmem_rate - 1) if self.cmem_len else (self.mem_len,)
        state = ()
        for n in slots:
            state += (
                torch.zeros(batch, n, self.d_model, device=device, dtype=dtype),
                torch.zeros(batch, n, device=device, dtype=torch.bool),
            )
        return state

    def state_size(self) -> int:
        pending = self.options.cmem_rate - 1 if self.cmem_len else 0
        return (self.mem_len + self.cmem_len + pending) * self.d_model

    def forward_parallel(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        B, T, _ = x.shape
        H, Dh = self.heads, self.head_dim
        (memory,), valid_mem = kv_memory.fit(state[:1], state[1], self.mem_len)
        M = memory.shape[1]
        L = M + T
        (hidden,), valid = kv_memory.extend((memory,), (x,), valid_mem)

        q = self.q(x).view(B, T, H, Dh)
        k, v = self.kv(hidden).view(B, L, 2, H, Dh).unbind(2)
        # W_R R for distances L-1 .. 0 (clamped), then the position term of every (query, key).
        distances = torch.arange(L - 1, -1, -1, device=x.device)
        position = rel_shift(torch.einsum("bthd,lhd->bhtl", *self._position_terms(q, distances)))

        scale = 1.0 / math.sqrt(Dh)
        # under same_length every query sees itself and the M tokens before it: a window of M + 1
        mask = kv_memory.causal_mask(valid, T, M + 1 if self.options.same_length else None)
        bias = (position * scale).masked_fill(~mask, float("-inf"))
        new_state = kv_memory.keep_last((memory, valid_mem), (hidden, valid))  # kept in fp32
        if self.cmem_len:
            ck, cv, cbias, compressed = self._compressed(q, hidden, valid, state[2:], M)
            k, v, bias = torch.cat([ck, k], 1), torch.cat([cv, v], 1), torch.cat([cbias * scale, bias], -1)
            new_state += compressed
        qu = (q + self.u).transpose(1, 2)
        kt, vt = k.transpose(1, 2), v.transpose(1, 2)
        qu, bias = qu.to(kt.dtype), bias.to(kt.dtype)
        y = F.scaled_dot_product_attention(qu, kt, vt, attn_mask=bias, scale=scale)
        y = self.out(y.transpose(1, 2).reshape(B, T, self.d_model))
        return y, new_state

    def _position_terms(self, q: torch.Tensor, distances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(q + v, W_R R)`` for the given distances (clamped at ``clamp_len``), in one dtype."""
        if self.options.clamp_len is not None:
            distances = distances.clamp(max=self.options.clamp_len)
        r = self.r(sinusoid(distances, self.d_model, self.r.weight.dtype)).view(-1, self.heads, self.head_dim)
        return (q + self.v).to(r.dtype), r

    def _compressed(self, q: torch.Tensor, hidden: torch.Tensor, valid: torch.Tensor, state: State, M: int):
        """Keys, values and unscaled position scores (-inf where unseen) of the compressed slots, and their new state.

        ``hidden``/``valid`` are ``[memory; x]``; its first ``T`` slots leave
        the memory in this call, after the pending states. Under
        ``same_length`` the groups they complete are read from the first query
        after their last state left its window; otherwise from the next call.
        """
        B, T = q.shape[:2]
        rate, C = self.options.cmem_rate, self.cmem_len
        cmem, cvalid, pending, pvalid = state
        leaving = torch.cat([pending, hidden[:, :T].to(pending.dtype)], 1)
        leaving_valid = torch.cat([pvalid, valid[:, :T]], 1)
        (grouped,), complete, (pending,), pvalid = kv_memory.split_groups((leaving,), leaving_valid, rate)
        groups = pool_groups(grouped, rate, self.options.compress)
        (new_cmem,), new_cvalid = kv_memory.push((cmem,), cvalid, (groups,), complete)

        # each query reads compressed slots newest first: the one of rank r at distance M + 1 + r (+ i, the
        # query's place in the call, without same_length, where the call's earlier tokens come in between)
        newer = cvalid.flip(1).cumsum(1).flip(1) - cvalid.long()  # valid carried slots newer than each slot
        if self.options.same_length:
            gone = F.pad(leaving_valid.cumsum(1), (1, 0))[:, rate - 1 : rate - 1 + T]  # states gone before query i
            seen = (gone // rate)[:, :, None]  # this call's groups complete by query i
            g = torch.arange(groups.shape[1], device=q.device)
            compressed = torch.cat([cmem, groups.to(cmem.dtype)], 1)
            rank = torch.cat([newer[:, None, :] + seen, seen - 1 - g], -1)
            visible = torch.cat([cvalid[:, None, :].expand(B, T, C), g < seen], -1) & (rank < C)
            offset, span = torch.zeros(T, dtype=torch.long, device=q.device), C
        else:
            compressed, rank, visible = cmem, newer[:, None, :].expand(B, T, C), cvalid[:, None, :].expand(B, T, C)
            offset, span = torch.arange(T, device=q.device), T + C - 1
        qv, r = self._position_terms(q, torch.arange(M + 1, M + 1 + span, device=q.device))
        table = torch.einsum("bthd,nhd->bhtn", qv, r)  # by distance M + 1 + n
        index = offset[:, None] + rank.clamp(0, C - 1)  # in range for unseen slots too: they are masked
        position = table.gather(-1, index[:, None].expand(B, self.heads, T, -1))
        position = position.masked_fill(~visible[:, None], float("-inf"))
        ck, cv = self.kv(compressed.to(hidden.dtype)).view(B, -1, 2, self.heads, self.head_dim).unbind(2)
        return ck, cv, position, (new_cmem, new_cvalid, pending, pvalid)

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        y, state = self.forward_parallel(x[:, None], state)
        return y[:, 0], state
