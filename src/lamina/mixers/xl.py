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


@dataclass
class XLOptions:
    heads: int = 4
    mem_len: int = 0  # past hidden states carried across segments (0: none)
    clamp_len: Optional[int] = None  # distances beyond it use R_{clamp_len} (None: no clamping)
    same_length: bool = False  # every query attends to itself and the mem_len tokens before it


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

    def __init__(self, d_model: int, options: XLOptions, layer_idx: int = 0, n_layers: int = 1):
        super().__init__(d_model, options, layer_idx, n_layers)
        if options.heads < 1 or d_model % options.heads or d_model % 2:
            raise LaminaError(
                f"xl: d_model {d_model} must be even and split into heads={options.heads} equal heads; "
                "change model.d_model or the heads option"
            )
        if options.mem_len < 0:
            raise LaminaError(f"xl: mem_len must be an integer >= 0, got {options.mem_len}")
        if options.clamp_len is not None and options.clamp_len < 0:
            raise LaminaError(f"xl: clamp_len must be an integer >= 0 or null, got {options.clamp_len}")
        self.heads = options.heads
        self.head_dim = d_model // options.heads
        self.mem_len = options.mem_len
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.kv = nn.Linear(d_model, 2 * d_model, bias=False)
        self.r = nn.Linear(d_model, d_model, bias=False)  # W_R
        self.u = nn.Parameter(torch.zeros(self.heads, self.head_dim))
        self.v = nn.Parameter(torch.zeros(self.heads, self.head_dim))
        self.out = nn.Linear(d_model, d_model, bias=False)

    def init_state(self, batch: int, device=None, dtype=None) -> State:
        dtype = torch.float64 if dtype == torch.float64 else torch.float32
        memory = torch.zeros(batch, self.mem_len, self.d_model, device=device, dtype=dtype)
        return memory, torch.zeros(batch, self.mem_len, device=device, dtype=torch.bool)

    def state_size(self) -> int:
        return self.mem_len * self.d_model

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
        if self.options.clamp_len is not None:
            distances = distances.clamp(max=self.options.clamp_len)
        r = self.r(sinusoid(distances, self.d_model, self.r.weight.dtype)).view(L, H, Dh)
        position = rel_shift(torch.einsum("bthd,lhd->bhtl", (q + self.v).to(r.dtype), r))

        scale = 1.0 / math.sqrt(Dh)
        # under same_length every query sees itself and the M tokens before it: a window of M + 1
        mask = kv_memory.causal_mask(valid, T, M + 1 if self.options.same_length else None)
        bias = (position * scale).masked_fill(~mask, float("-inf"))
        qu = (q + self.u).transpose(1, 2)
        kt, vt = k.transpose(1, 2), v.transpose(1, 2)
        qu, bias = qu.to(kt.dtype), bias.to(kt.dtype)
        y = F.scaled_dot_product_attention(qu, kt, vt, attn_mask=bias, scale=scale)
        y = self.out(y.transpose(1, 2).reshape(B, T, self.d_model))
        return y, kv_memory.keep_last((memory, valid_mem), (hidden, valid))  # kept in fp32

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        y, state = self.forward_parallel(x[:, None], state)
        return y[:, 0], state
