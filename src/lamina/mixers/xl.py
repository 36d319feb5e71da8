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
:func:`~lamina.mixers.state.detach_state` between segments; inside one call
the carried state keeps its graph, so every form gives the same gradients.
``mem_len`` is read at every call: :meth:`~lamina.mixers.kv_memory.KVMemoryMixer.memory_length`
may lengthen it for evaluation, and a carried memory of another length is
trimmed or left-padded with empty slots.

Compressive memory (``cmem_len > 0``): Rae et al. 2020. Hidden states that
leave the memory are pooled ``cmem_rate`` to one (``compress``: mean or max)
into a second memory of ``cmem_len`` slots, and queries attend over
``[compressed memory; memory; segment]`` with keys and values from the
current weights; :mod:`lamina.mixers.parts.compressive` keeps that memory
and says where we depart from the paper.

State (:class:`XLState`): memory ``[B, mem_len, d]`` in fp32 with a validity
mask, and with ``cmem_len`` the compressed memory's state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lamina.errors import LaminaError
from lamina.mixers.kv_memory import KVMemoryMixer
from lamina.mixers.parts.compressive import CompressedState, CompressiveMemory
from lamina.mixers.registry import register
from lamina.ops import kv_memory
from lamina.ops.relative import rel_shift, sinusoid
from lamina.ops.pooling import POOLS


class XLState(NamedTuple):
    memory: torch.Tensor  # this layer's inputs of the last mem_len tokens [B, M, d], fp32 or wider
    valid: torch.Tensor  # [B, M] bool, newest last
    compressed: Optional[CompressedState] = None  # with cmem_len > 0


@dataclass
class XLOptions:
    heads: int = 4
    mem_len: int = 0  # past hidden states carried across segments (0: none)
    clamp_len: Optional[int] = None  # distances beyond it use R_{clamp_len} (None: no clamping)
    same_length: bool = False  # every query attends to itself and the mem_len tokens before it
    cmem_len: int = 0  # compressed memory slots for states leaving the memory (0: none, they are dropped)
    cmem_rate: int = 3  # states pooled into one compressed slot (the paper's c)
    compress: str = "mean"  # the pooling that compresses them: mean or max


@register("xl")
class TransformerXL(KVMemoryMixer):
    Options = XLOptions
    forms = ("recurrent", "parallel")

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
        self.compressive = None  # the compressed memory, with cmem_len > 0
        if options.cmem_len:
            self.compressive = CompressiveMemory(options.cmem_len, options.cmem_rate, options.compress,
                                                 options.same_length)
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.kv = nn.Linear(d_model, 2 * d_model, bias=False)
        self.r = nn.Linear(d_model, d_model, bias=False)  # W_R
        self.u = nn.Parameter(torch.zeros(self.heads, self.head_dim))
        self.v = nn.Parameter(torch.zeros(self.heads, self.head_dim))
        self.out = nn.Linear(d_model, d_model, bias=False)

    @property
    def compressed_len(self) -> int:
        return self.options.cmem_len

    def init_state(self, batch: int, device=None, dtype=None) -> XLState:
        """Memory and validity; with ``cmem_len``, the compressed memory's state."""
        dtype = torch.float64 if dtype == torch.float64 else torch.float32
        memory = torch.zeros(batch, self.mem_len, self.d_model, device=device, dtype=dtype)
        valid = torch.zeros(batch, self.mem_len, device=device, dtype=torch.bool)
        if self.compressive is None:
            return XLState(memory, valid)
        return XLState(memory, valid, self.compressive.init_state(batch, self.d_model, device, dtype))

    def state_size(self) -> int:
        compressed = self.compressive.size(self.d_model) if self.compressive is not None else 0
        return self.mem_len * self.d_model + compressed

    def forward_parallel(self, x: torch.Tensor, state: XLState) -> tuple[torch.Tensor, XLState]:
        B, T, _ = x.shape
        H, Dh = self.heads, self.head_dim
        (memory,), valid_mem = kv_memory.fit((state.memory,), state.valid, self.mem_len)
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
        new_state = XLState(*kv_memory.keep_last((memory, valid_mem), (hidden, valid)))  # kept in fp32
        if self.compressive is not None:
            ck, cv, cbias, compressed = self._compressed(q, hidden, valid, state.compressed, M)
            k, v, bias = torch.cat([ck, k], 1), torch.cat([cv, v], 1), torch.cat([cbias * scale, bias], -1)
            new_state = new_state._replace(compressed=compressed)
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

    def _compressed(self, q: torch.Tensor, hidden: torch.Tensor, valid: torch.Tensor, state: CompressedState,
                    M: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, CompressedState]:
        """Keys, values and unscaled position scores (-inf where unseen) of the compressed slots, and their new state.

        ``hidden``/``valid`` are ``[memory; x]``; its first ``T`` slots leave
        the memory in this call (see :meth:`CompressiveMemory.advance`).
        """
        B, T = q.shape[:2]
        view, new_state = self.compressive.advance(hidden[:, :T], valid[:, :T], state)
        qv, r = self._position_terms(q, torch.arange(M + 1, M + 1 + view.span, device=q.device))
        table = torch.einsum("bthd,nhd->bhtn", qv, r)  # by distance M + 1 + n
        index = view.offset[:, None] + view.rank.clamp(0, self.compressive.slots - 1)  # unseen slots: masked
        position = table.gather(-1, index[:, None].expand(B, self.heads, T, -1))
        position = position.masked_fill(~view.visible[:, None], float("-inf"))
        ck, cv = self.kv(view.slots.to(hidden.dtype)).view(B, -1, 2, self.heads, self.head_dim).unbind(2)
        return ck, cv, position, new_state

    def step(self, x: torch.Tensor, state: XLState) -> tuple[torch.Tensor, XLState]:
        y, state = self.forward_parallel(x[:, None], state)
        return y[:, 0], state
