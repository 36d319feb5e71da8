"""Infini-attention: local softmax attention plus a compressive memory, mixed by a learned gate.

Munkhdalai et al. 2024, "Leave No Context Behind", section 2. The stream is
cut into segments of ``segment`` tokens, counted from its start (the empty
state) whatever the split into calls. Per head, a token attends causally to
the earlier tokens of its segment (dot-product attention, rotary positions
from 0 in each segment, optional) and reads the compressive memory left by
the previous segments (:func:`lamina.ops.compressive.compressive_memory`:
``A_mem = sigma(Q) M / (sigma(Q) z)``, ``sigma = elu + 1``); when a segment is
complete, all its keys and values are written into the memory (``update``:
``linear`` or ``delta``). The two reads are mixed per head by
``A = sigmoid(beta) A_mem + (1 - sigmoid(beta)) A_dot`` and projected out.

The state carries the memory and the keys and values of the unfinished
segment (:class:`lamina.mixers.lamina.ops.segments.Segments`), so a full run, any split
into calls with carried state and token-by-token decoding compute the same
function: the model trained on segments is the model that generates. A call
processes its whole segments at once (local attention batched over them; the
memory read and write is a loop over segments).

Initialisation: projections as ``nn.Linear``; ``beta = 0``, an even mix of
memory and local attention (the paper does not give one).
State: ``M [B, H, D/H, D/H]`` and ``z [B, H, D/H]`` in fp32, and the unfinished
segment's keys and values ``[B, segment - 1, H, D/H]`` with their mask:
``d · (d/H + 1) + 2 (segment - 1) d`` floats.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from lamina.errors import LaminaError
from lamina.mixers.base import Mixer
from lamina.mixers.registry import register
from lamina.ops.segments import Segments
from lamina.ops.compressive import UPDATES, compressive_memory, read_memory
from lamina.ops.rotary import rotary



class InfiniState(NamedTuple):
    memory: torch.Tensor  # M [B, H, D/H, D/H]
    norm: torch.Tensor  # z [B, H, D/H]
    keys: torch.Tensor  # the unfinished segment's keys [B, segment - 1, H, D/H]
    values: torch.Tensor  # and values
    filled: torch.Tensor  # [B, segment - 1] bool: its slots read so far


@dataclass
class InfiniOptions:
    heads: int = 4
    update: str = "linear"  # memory write rule: linear (M += sigma(K)^T V) or delta
    rope: bool = True  # rotary positions (0..segment-1 within each segment) for the local attention
    rope_base: float = 10000.0
    segment: int = 64  # tokens per segment, counted from the stream's start


@register("infini")
class InfiniAttention(Mixer):
    Options = InfiniOptions
    forms = ("parallel",)

    def __init__(self, d_model: int, options: InfiniOptions, layer_idx: int = 0, n_layers: int = 1):
        super().__init__(d_model, options, layer_idx, n_layers)
        if d_model % options.heads or (options.rope and (d_model // options.heads) % 2):
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

    def init_state(self, batch: int, device=None, dtype=None) -> InfiniState:
        """Memory ``[B, H, D/H, D/H]``, normaliser ``[B, H, D/H]``, the unfinished segment's keys and values
        ``[B, segment - 1, H, D/H]`` and their mask ``[B, segment - 1]``: zeros (empty)."""
        dtype = torch.float64 if dtype == torch.float64 else torch.float32
        H, Dh, S = self.heads, self.head_dim, self.options.segment
        keys = torch.zeros(batch, S - 1, H, Dh, device=device, dtype=dtype)
        return InfiniState(
            torch.zeros(batch, H, Dh, Dh, device=device, dtype=dtype),
            torch.zeros(batch, H, Dh, device=device, dtype=dtype),
            keys,
            keys.clone(),
            torch.zeros(batch, S - 1, device=device, dtype=torch.bool),
        )

    def state_size(self) -> int:
        return self.d_model * (self.head_dim + 1) + 2 * (self.options.segment - 1) * self.d_model

    def forward_parallel(self, x: torch.Tensor, state: InfiniState) -> tuple[torch.Tensor, InfiniState]:
        B, T, _ = x.shape
        memory, norm, k_seg, v_seg = state.memory, state.norm, state.keys, state.values
        seg = Segments(state.filled, T, self.options.segment)
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.head_dim).unbind(2)
        k, v = seg.layout(k, k_seg), seg.layout(v, v_seg)  # [B, n * segment, H, Dh]

        # the memory: each segment reads it as the earlier segments left it, and is written into it once complete
        complete = seg.complete()
        reads = []
        segments = zip(seg.query_segments(q), seg.segments(k).unbind(1), seg.segments(v).unbind(1))
        for j, (q_j, k_j, v_j) in enumerate(segments):
            if not seg.any_complete(j):  # the last segment, unfinished in every row: read only
                reads.append(read_memory(q_j, memory, norm))
                continue
            read, (new_memory, new_norm) = compressive_memory(q_j, k_j, v_j, memory, norm, self.options.update)
            reads.append(read)
            memory = torch.where(complete[:, j, None, None, None], new_memory, memory)
            norm = torch.where(complete[:, j, None, None], new_norm, norm)
        a_mem = seg.from_segments(reads)

        # local attention, causal inside each segment, rotary positions from 0 in each
        qr, kr = q, k
        if self.options.rope:
            base = self.options.rope_base
            qr, kr = rotary(q, seg.call_positions, base), rotary(k, seg.positions, base)
        a_dot = seg.attend(qr, kr, v)  # [B, T, H, Dh]

        gate = torch.sigmoid(self.beta)[:, None].to(a_dot.dtype)  # [H, 1]
        a = gate * a_mem.to(a_dot.dtype) + (1 - gate) * a_dot
        y = self.out(a.reshape(B, T, self.d_model))
        (new_k, filled), (new_v, _) = seg.unfinished(k), seg.unfinished(v)
        return y, InfiniState(memory, norm, new_k.to(k_seg.dtype), new_v.to(v_seg.dtype), filled)
