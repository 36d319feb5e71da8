"""Block-Recurrent Transformer: a block of tokens and a set of recurrent state vectors attend to each other.

Hutchins et al. 2022, "Block-Recurrent Transformers", section 3. A call is one
block. Each sequence carries ``n_state`` state vectors; a learned state ID is
added to each (section 3.1) before its queries, keys and values are made.

- Vertical direction (the tokens): causal self-attention within the call
  (rotary positions from 0, optional) and cross-attention to the state,
  concatenated and projected: ``y = W_o [A_self ; A_cross]``.
- Horizontal direction (the state): self-attention among the state vectors and
  cross-attention to all the call's tokens, ``h = W_h [A_self ; A_cross]``,
  then the fixed LSTM-style gate of section 3.2,
  ``c' = c * sigmoid(W_f h + b_f) + tanh(W_z h + b_z) * sigmoid(W_i h + b_i)``.

Keys and values are shared by both directions (tokens' keys/values serve
token self-attention and state cross-attention; the state's serve both
others); the queries are separate. Scores are scaled by ``1/sqrt(D/H)``.

Segment-level recurrence: the state changes once per call, from the whole
call, so chunked runs differ from one full run by design (see
:mod:`lamina.mixers.base`). The paper's sliding window is the call itself.

Initialisation: projections as ``nn.Linear``; state IDs ``N(0, 1)`` (as
``nn.Embedding``, so the slots are told apart from the first block on);
``b_f = +1`` (remember) and ``b_i = -1``, the paper's gate offsets, as initial
biases; ``b_z = 0``. State: ``[B, n_state, d]`` in fp32, ``n_state · d`` floats.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lamina.errors import LaminaError
from lamina.mixers.base import Mixer, State, register
from lamina.ops.rotary import rotary


@dataclass
class BlockRecurrentOptions:
    n_state: int = 16  # recurrent state vectors per sequence
    heads: int = 4
    rope: bool = True  # rotary positions (0..T-1 within the call) for the tokens' self-attention
    rope_base: float = 10000.0


@register("block_recurrent")
class BlockRecurrent(Mixer):
    Options = BlockRecurrentOptions
    forms = ("parallel",)
    segment_level = True

    def __init__(self, d_model: int, options: BlockRecurrentOptions, layer_idx: int = 0, n_layers: int = 1):
        super().__init__(d_model, options, layer_idx, n_layers)
        if options.heads < 1 or d_model % options.heads or (options.rope and (d_model // options.heads) % 2):
            raise LaminaError(
                f"block_recurrent: d_model {d_model} must split into heads={options.heads} equal heads "
                "(of an even size with rope); change model.d_model or the heads option"
            )
        if options.n_state < 1:
            raise LaminaError(f"block_recurrent: n_state must be an integer >= 1, got {options.n_state}")
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

    def init_state(self, batch: int, device=None, dtype=None) -> State:
        dtype = torch.float64 if dtype == torch.float64 else torch.float32
        return (torch.zeros(batch, self.options.n_state, self.d_model, device=device, dtype=dtype),)

    def state_size(self) -> int:
        return self.options.n_state * self.d_model

    def _heads(self, t: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
        """``[B, L, n * d]`` -> ``n`` tensors ``[B, L, H, D/H]``."""
        B, L, _ = t.shape
        return t.view(B, L, n, self.heads, self.head_dim).unbind(2)

    def _attend(self, q, k, v, causal: bool = False) -> torch.Tensor:
        """Multi-head attention on ``[B, L, H, D/H]`` tensors -> ``[B, Lq, d]``."""
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal)
        return y.transpose(1, 2).flatten(2)

    def forward_parallel(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        (c,) = state
        T = x.shape[1]
        s = (c + self.state_ids).to(x.dtype)
        q_self, q_cross = self._heads(self.token_q(x), 2)
        k_x, v_x = self._heads(self.token_kv(x), 2)
        qs_self, qs_cross = self._heads(self.state_q(s), 2)
        k_s, v_s = self._heads(self.state_kv(s), 2)
        if self.options.rope:
            positions = torch.arange(T, device=x.device)
            q_self = rotary(q_self, positions, self.options.rope_base)
            k_rot = rotary(k_x, positions, self.options.rope_base)
        else:
            k_rot = k_x

        # vertical direction: the tokens
        y = self.out(torch.cat([self._attend(q_self, k_rot, v_x, causal=True), self._attend(q_cross, k_s, v_s)], -1))
        # horizontal direction: the state, read by the whole block, then gated
        h = self.state_out(torch.cat([self._attend(qs_self, k_s, v_s), self._attend(qs_cross, k_x, v_x)], -1))
        z, i, f = self.gate(h).to(c.dtype).chunk(3, dim=-1)  # the gate arithmetic in the state dtype
        new = c * torch.sigmoid(f) + torch.tanh(z) * torch.sigmoid(i)
        return y, (new.to(c.dtype),)
