"""Infini-attention: local softmax attention plus a compressive memory, mixed by a learned gate.

Munkhdalai et al. 2024, "Leave No Context Behind", section 2. Per head, a call
is one segment: its tokens attend causally to each other (dot-product
attention within the call, rotary positions from 0 optional), read the
compressive memory left by the previous segments
(:func:`lamina.ops.compressive.compressive_memory`: ``A_mem = sigma(Q) M /
(sigma(Q) z)``, ``sigma = elu + 1``) and, once the call is done, write all their
keys and values into it (``update``: ``linear`` or ``delta``). The two reads
are mixed per head by ``A = sigmoid(beta) A_mem + (1 - sigmoid(beta)) A_dot``
and projected out.

Segment-level recurrence: the memory changes once per call, so a sequence run
in chunks is *not* the same function as one full call (a token sees the
earlier tokens of its own chunk exactly and the earlier chunks only through
the memory). That is the paper's design, not an approximation of a full run;
the mixer sets ``segment_level`` (see :mod:`lamina.mixers.base`). A single
token per call is a one-token segment, which makes decoding token by token a
different (memory-only plus self) model: decode with the segment length the
model was trained with in mind.

Initialisation: projections as ``nn.Linear``; ``beta = 0``, an even mix of
memory and local attention (the paper does not give one).
State: ``M [B, H, D/H, D/H]`` and ``z [B, H, D/H]`` in fp32, ``d · (d/H + 1)`` floats.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lamina.errors import LaminaError
from lamina.mixers.base import Mixer, State, register
from lamina.ops.compressive import UPDATES, compressive_memory
from lamina.ops.rotary import rotary


@dataclass
class InfiniOptions:
    heads: int = 4
    update: str = "linear"  # memory write rule: linear (M += sigma(K)^T V) or delta
    rope: bool = True  # rotary positions (0..T-1 within the call) for the local attention
    rope_base: float = 10000.0


@register("infini")
class InfiniAttention(Mixer):
    Options = InfiniOptions
    forms = ("parallel",)
    segment_level = True

    def __init__(self, d_model: int, options: InfiniOptions, layer_idx: int = 0, n_layers: int = 1):
        super().__init__(d_model, options, layer_idx, n_layers)
        if options.heads < 1 or d_model % options.heads or (options.rope and (d_model // options.heads) % 2):
            raise LaminaError(
                f"infini: d_model {d_model} must split into heads={options.heads} equal heads "
                "(of an even size with rope); change model.d_model or the heads option"
            )
        if options.update not in UPDATES:
            raise LaminaError(f"infini: update must be one of {', '.join(UPDATES)}, got {options.update!r}")
        self.heads = options.heads
        self.head_dim = d_model // options.heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.beta = nn.Parameter(torch.zeros(self.heads))
        self.out = nn.Linear(d_model, d_model, bias=False)

    def init_state(self, batch: int, device=None, dtype=None) -> State:
        """Memory ``[B, H, D/H, D/H]`` and normaliser ``[B, H, D/H]``, zeros (empty)."""
        dtype = torch.float64 if dtype == torch.float64 else torch.float32
        H, Dh = self.heads, self.head_dim
        return (
            torch.zeros(batch, H, Dh, Dh, device=device, dtype=dtype),
            torch.zeros(batch, H, Dh, device=device, dtype=dtype),
        )

    def state_size(self) -> int:
        return self.d_model * (self.head_dim + 1)

    def forward_parallel(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.head_dim).unbind(2)
        memory, norm = state
        a_mem, (memory, norm) = compressive_memory(q, k, v, memory, norm, self.options.update)
        if self.options.rope:
            positions = torch.arange(T, device=x.device)
            q, k = rotary(q, positions, self.options.rope_base), rotary(k, positions, self.options.rope_base)
        a_dot = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        gate = torch.sigmoid(self.beta)[:, None, None].to(a_dot.dtype)  # [H, 1, 1]
        a = gate * a_mem.transpose(1, 2).to(a_dot.dtype) + (1 - gate) * a_dot  # [B, H, T, Dh]
        y = self.out(a.transpose(1, 2).reshape(B, T, self.d_model))
        return y, (memory, norm)
