"""Titans' memory as a gate (``titans_mag``, MAG).

Behrouz, Zhong & Mirrokni 2025, "Titans: Learning to Memorize at Test Time",
section 4.2. A sliding-window
attention branch over ``persistent`` learned key/value slots (always
visible) and the last ``window`` tokens (rotary positions), and the same
memory branch, combined per head as ``RMSNorm(y_attn) * sigmoid(RMSNorm(y_mem))``
(the paper's normalisation "with learnable vector-valued weights, followed by
a non-linearity"), then ``W_out``. Its state adds the keys and values of the
last ``window - 1`` tokens, so carried chunks equal the full run. The
persistent tokens enter the attention only (the paper also feeds them to the
memory at the sequence's start).

The memory branch is :mod:`lamina.mixers.parts.neural_memory`; the
persistent slots, attention and gate :mod:`lamina.mixers.parts.titans_attention`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from lamina.mixers.parts.neural_memory import NeuralMemoryState, TitansOptions
from lamina.mixers.parts.titans_attention import TitansAttention
from lamina.mixers.registry import register
from lamina.ops import kv_memory


class TitansMAGState(NamedTuple):
    memory: NeuralMemoryState
    keys: torch.Tensor  # the window's last window - 1 keys [B, window - 1, H, K]
    values: torch.Tensor  # and values
    valid: torch.Tensor  # [B, window - 1] bool, newest last


@dataclass
class TitansMAGOptions(TitansOptions):
    window: int = 64  # sliding-window attention: each query sees the last `window` tokens (itself included)
    persistent: int = 4  # learned key/value slots every query sees (the paper's persistent memory)
    rope_base: float = 10000.0


@register("titans_mag")
class TitansMAG(TitansAttention):
    """Titans' memory as a gate on sliding-window attention (MAG, section 4.2)."""

    Options = TitansMAGOptions
    forms = ("recurrent", "chunk")

    def __init__(self, d_model: int, options: TitansMAGOptions, layer_idx: int = 0, n_layers: int = 1):
        super().__init__(d_model, options, layer_idx, n_layers, options)

    def init_state(self, batch: int, device=None, dtype=None) -> TitansMAGState:
        """The memory branch's state, then keys, values ``[B, window - 1, H, K]`` and their validity."""
        dtype = torch.promote_types(dtype or torch.float32, torch.float32)
        shape = (batch, self.options.window - 1, self.memory.heads, self.memory.head_dim)
        return TitansMAGState(self.memory.init_state(batch, device, dtype),
                              torch.zeros(shape, device=device, dtype=dtype),
                              torch.zeros(shape, device=device, dtype=dtype),
                              torch.zeros(shape[:2], device=device, dtype=torch.bool))

    def state_size(self) -> int:
        """``3 H K^2 + 1`` for the memory, ``2 (window - 1) H K`` for the window's keys and values."""
        H, K = self.memory.heads, self.memory.head_dim
        return self.memory.state_size() + 2 * (self.options.window - 1) * H * K

    def _attend(self, x: torch.Tensor, state: TitansMAGState) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Sliding-window attention with persistent slots: ``[B, T, H, K]`` and the new keys, values, validity."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.memory.heads, self.memory.head_dim).unbind(2)
        window = (state.keys, state.values, state.valid)
        (k_all, v_all), valid = kv_memory.extend((state.keys, state.values), (k, v), state.valid)
        M = k_all.shape[1] - T
        positions = torch.arange(M + T, device=x.device)
        y = self._attention(q, k_all, v_all, positions[M:], positions,
                            kv_memory.causal_mask(valid, T, self.options.window))
        return y, kv_memory.keep_last(window, (k_all, v_all, valid))

    def forward_chunk(self, x: torch.Tensor, state: TitansMAGState) -> tuple[torch.Tensor, TitansMAGState]:
        y_mem, memory = self.memory(x, state.memory)
        y_attn, window = self._attend(x, state)
        return self._combine(y_attn, y_mem), TitansMAGState(memory, *window)

    def step(self, x_t: torch.Tensor, state: TitansMAGState) -> tuple[torch.Tensor, TitansMAGState]:
        y_mem, memory = self.memory.step(x_t, state.memory)
        y_attn, window = self._attend(x_t[:, None], state)
        return self._combine(y_attn[:, 0], y_mem), TitansMAGState(memory, *window)
