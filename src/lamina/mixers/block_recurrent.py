"""Block-Recurrent Transformer: a block of tokens and a set of recurrent state vectors attend to each other.

Hutchins et al. 2022, "Block-Recurrent Transformers", section 3. The stream is
cut into blocks of ``segment`` tokens, counted from its start (the empty
state) whatever the split into calls. Each sequence carries ``n_state`` state
vectors; a learned state ID is added to each (section 3.1) before its queries,
keys and values are made.

- Vertical direction (the tokens): causal self-attention within the block
  (rotary positions from 0 in each block, optional) and cross-attention to the
  state as it was when the block started, concatenated and projected:
  ``y = W_o [A_self ; A_cross]``.
- Horizontal direction (the state), once a block is complete: self-attention
  among the state vectors and cross-attention to all the block's tokens,
  ``h = W_h [A_self ; A_cross]``, then the fixed LSTM-style gate of section 3.2,
  ``c' = c * sigmoid(W_f h + b_f) + tanh(W_z h + b_z) * sigmoid(W_i h + b_i)``.

Keys and values are shared by both directions (tokens' keys/values serve
token self-attention and state cross-attention; the state's serve both
others); the queries are separate. Scores are scaled by ``1/sqrt(D/H)``.
Departure from the paper: its sliding window also reaches into the previous
block; here a token sees its own block only, and earlier blocks through the
state alone, so the carried state stays one block's keys and values.

The state carries the state vectors and the keys and values of the
unfinished block (:class:`lamina.mixers.lamina.ops.segments.Segments`), so a full run,
any split into calls with carried state and token-by-token decoding compute
the same function: the model trained on blocks is the model that generates.
A call processes its whole blocks at once (token self-attention batched over
them; the state update is a loop over blocks).

Initialisation: projections as ``nn.Linear``; state IDs ``N(0, 1)`` (as
``nn.Embedding``, so the slots are told apart from the first block on);
``b_f = +1`` (remember) and ``b_i = -1``, the paper's gate offsets, as initial
biases; ``b_z = 0``. State: ``[B, n_state, d]`` in fp32 and the unfinished
block's keys and values ``[B, segment - 1, 2d]`` with their mask:
``n_state · d + 2 (segment - 1) d`` floats.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lamina.errors import LaminaError
from lamina.mixers.base import Mixer
from lamina.mixers.registry import register
from lamina.ops.segments import Segments
from lamina.ops.rotary import rotary



class BlockRecurrentState(NamedTuple):
    vectors: torch.Tensor  # the recurrent state vectors [B, n_state, d]
    kv: torch.Tensor  # the unfinished block's token keys and values [B, segment - 1, 2d]
    filled: torch.Tensor  # [B, segment - 1] bool: its slots read so far


@dataclass
class BlockRecurrentOptions:
    n_state: int = 16  # recurrent state vectors per sequence
    heads: int = 4
    rope: bool = True  # rotary positions (0..segment-1 within each block) for the tokens' self-attention
    rope_base: float = 10000.0
    segment: int = 64  # tokens per block, counted from the stream's start


@register("block_recurrent")
class BlockRecurrent(Mixer):
    Options = BlockRecurrentOptions
    forms = ("parallel",)

    def __init__(self, d_model: int, options: BlockRecurrentOptions, layer_idx: int = 0, n_layers: int = 1):
        super().__init__(d_model, options, layer_idx, n_layers)
        if d_model % options.heads or (options.rope and (d_model // options.heads) % 2):
            raise LaminaError(
                f"block_recurrent: d_model {d_model} must split into heads={options.heads} equal heads "
                "(of an even size with rope); change model.d_model or the heads option"
            )
        d = d_model
        self.heads = options.heads
        self.head_dim = d // options.heads
        self.token_q = nn.Linear(d, 2 * d, bias=False)  # queries: token self, token -> state
        self.token_kv = nn.Linear(d, 2 * d, bias=False)
        self.state_q = nn.Linear(d, 2 * d, bias=False)  # queries: state self, state -> tokens
        self.state_kv = nn.Linear(d, 2 * d, bias=False)
        self.state_ids = nn.Parameter(torch.randn(options.n_state, d))
        self.out = nn.Linear(2 * d, d, bias=False)  # W_o
        self.state_out = nn.Linear(2 * d, d, bias=False)  # W_h
        self.gate = nn.Linear(d, 3 * d)  # W_z, W_i, W_f with their biases
        with torch.no_grad():
            self.gate.bias.zero_()
            self.gate.bias[d : 2 * d] = -1.0
            self.gate.bias[2 * d :] = 1.0

    def init_state(self, batch: int, device=None, dtype=None) -> BlockRecurrentState:
        """State vectors ``[B, n_state, d]``, the unfinished block's token keys and values ``[B, segment - 1, 2d]``
        and their mask ``[B, segment - 1]``: zeros (empty)."""
        dtype = torch.float64 if dtype == torch.float64 else torch.float32
        S = self.options.segment
        return BlockRecurrentState(
            torch.zeros(batch, self.options.n_state, self.d_model, device=device, dtype=dtype),
            torch.zeros(batch, S - 1, 2 * self.d_model, device=device, dtype=dtype),
            torch.zeros(batch, S - 1, device=device, dtype=torch.bool),
        )

    def state_size(self) -> int:
        return (self.options.n_state + 2 * (self.options.segment - 1)) * self.d_model

    def _heads(self, t: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
        """``[B, L, n * d]`` -> ``n`` tensors ``[B, L, H, D/H]``."""
        B, L, _ = t.shape
        return t.view(B, L, n, self.heads, self.head_dim).unbind(2)

    def _attend(self, q, k, v) -> torch.Tensor:
        """Multi-head attention on ``[B, L, H, D/H]`` tensors, every query to every key -> ``[B, Lq, d]``."""
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return y.transpose(1, 2).flatten(2)

    def forward_parallel(self, x: torch.Tensor, state: BlockRecurrentState) -> tuple[torch.Tensor, BlockRecurrentState]:
        c, kv_seg = state.vectors, state.kv
        seg = Segments(state.filled, x.shape[1], self.options.segment)
        kv = seg.layout(self.token_kv(x), kv_seg)  # [B, n * segment, 2d]
        k_x, v_x = self._heads(kv, 2)
        q_self, q_cross = self._heads(self.token_q(x), 2)

        # the state: each block's tokens read it as the earlier blocks left it; it reads each complete block
        complete = seg.complete()
        reads = []
        blocks = zip(seg.query_segments(q_cross), seg.segments(k_x).unbind(1), seg.segments(v_x).unbind(1))
        for j, (q_j, k_j, v_j) in enumerate(blocks):
            s = (c + self.state_ids).to(x.dtype)
            k_s, v_s = self._heads(self.state_kv(s), 2)
            reads.append(self._attend(q_j, k_s, v_s))
            if not seg.any_complete(j):  # the last block, unfinished in every row: no update
                continue
            qs_self, qs_cross = self._heads(self.state_q(s), 2)
            h = self.state_out(torch.cat([self._attend(qs_self, k_s, v_s), self._attend(qs_cross, k_j, v_j)], -1))
            z, i, f = self.gate(h).to(c.dtype).chunk(3, dim=-1)  # the gate arithmetic in the state dtype
            new = c * torch.sigmoid(f) + torch.tanh(z) * torch.sigmoid(i)
            c = torch.where(complete[:, j, None, None], new.to(c.dtype), c)
        cross = seg.from_segments(reads)  # [B, T, d]

        # the tokens' self-attention, causal inside each block, rotary positions from 0 in each
        if self.options.rope:
            base = self.options.rope_base
            q_self, k_x = rotary(q_self, seg.call_positions, base), rotary(k_x, seg.positions, base)
        local = seg.attend(q_self, k_x, v_x).flatten(2)  # [B, T, d]
        y = self.out(torch.cat([local, cross], -1))
        new_kv, filled = seg.unfinished(kv)
        return y, BlockRecurrentState(c, new_kv.to(kv_seg.dtype), filled)
