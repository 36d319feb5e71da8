"""Causal softmax attention with a key/value memory as its state.

Multi-head attention with rotary positions through
``torch.nn.functional.scaled_dot_product_attention`` (flash kernels on GPU).
The state is the last ``mem_len`` tokens' keys and values (with a validity
mask), so consecutive segments see each other as in Transformer-XL's segment
recurrence (Dai et al. 2019, section 3.2; here with rotary instead of its
relative sinusoids). ``mem_len=0`` is a vanilla transformer; ``window`` limits
every query to the last ``window`` keys (local attention), and with
``mem_len >= window - 1`` chunked and token-by-token runs equal the full one.

Keys are stored before rotation and rotated by their position inside the
``[memory + segment]`` window at every call: scores depend on distances only,
so positions never grow with the stream.

``sinks`` (with a window) keeps the first ``sinks`` keys/values of the stream
for good besides the window: StreamingLLM's attention sinks
(:mod:`lamina.mixers.parts.sinks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lamina.errors import LaminaError
from lamina.mixers.kv_memory import KVMemoryMixer
from lamina.mixers.parts.sinks import attend_with_sinks
from lamina.mixers.registry import register
from lamina.ops import kv_memory
from lamina.ops.rotary import rotary


class AttnState(NamedTuple):
    keys: torch.Tensor  # [B, M, H, D], unrotated
    values: torch.Tensor  # [B, M, H, D]
    valid: torch.Tensor  # [B, M] bool, newest last
    sink_keys: Optional[torch.Tensor] = None  # [B, sinks, H, D] with sinks, else None
    sink_values: Optional[torch.Tensor] = None
    sink_valid: Optional[torch.Tensor] = None  # [B, sinks] bool: the sink slots filled


@dataclass
class AttnOptions:
    heads: int = 4
    mem_len: int = 0  # keys/values carried across segments (0: none)
    window: Optional[int] = None  # sliding-window size including the query itself (None: unlimited)
    rope_base: float = 10000.0
    sinks: int = 0  # first tokens of the stream kept for good besides the window (needs window)


@register("attn")
class Attention(KVMemoryMixer):
    Options = AttnOptions
    forms = ("recurrent", "parallel")

    def __init__(self, d_model: int, options: AttnOptions, layer_idx: int = 0, n_layers: int = 1):
        super().__init__(d_model, options, layer_idx, n_layers)
        if d_model % options.heads or (d_model // options.heads) % 2:
            raise LaminaError(
                f"attn: d_model {d_model} must split into {options.heads} heads of an even size; "
                "change model.d_model or the heads option"
            )
        if options.sinks and options.window is None:
            raise LaminaError(
                f"attn: sinks = {options.sinks} must be 0, or a positive count together with a window; "
                "set window or sinks: 0"
            )
        self.heads = options.heads
        self.head_dim = d_model // options.heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def init_state(self, batch: int, device=None, dtype=None) -> AttnState:
        """Keys, values ``[B, M, H, D]`` and validity ``[B, M]``; with sinks, the same for ``[B, sinks]`` slots."""
        shape = (batch, self.mem_len, self.heads, self.head_dim)
        zeros = torch.zeros(shape, device=device, dtype=dtype or torch.float32)
        state = AttnState(zeros, zeros.clone(), torch.zeros(batch, self.mem_len, device=device, dtype=torch.bool))
        S = self.options.sinks
        if S:
            sink = torch.zeros(batch, S, self.heads, self.head_dim, device=device, dtype=dtype or torch.float32)
            state = state._replace(sink_keys=sink, sink_values=sink.clone(),
                                   sink_valid=torch.zeros(batch, S, device=device, dtype=torch.bool))
        return state

    def state_size(self) -> int:
        return 2 * (self.mem_len + self.options.sinks) * self.d_model

    def forward_parallel(self, x: torch.Tensor, state: AttnState) -> tuple[torch.Tensor, AttnState]:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.head_dim).unbind(2)
        k_mem, v_mem, valid_mem = state.keys, state.values, state.valid
        if k_mem.shape[1] != self.mem_len:
            raise ValueError(f"attn state holds {k_mem.shape[1]} tokens but mem_len is {self.mem_len}")
        if self.options.sinks:
            return self._with_sinks(q, k, v, state)
        M = self.mem_len
        (k_all, v_all), valid = kv_memory.extend((k_mem, v_mem), (k, v), valid_mem)

        positions = torch.arange(M + T, device=x.device)
        base = self.options.rope_base
        qr = rotary(q, positions[M:], base).transpose(1, 2)
        kr = rotary(k_all, positions, base).transpose(1, 2)
        vt = v_all.transpose(1, 2)
        if M == 0 and self.options.window is None:
            y = F.scaled_dot_product_attention(qr, kr, vt, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(qr, kr, vt, attn_mask=kv_memory.causal_mask(valid, T, self.options.window))
        memory = kv_memory.keep_last((k_mem, v_mem, valid_mem), (k_all, v_all, valid))  # kept in fp32
        return self._project(y), AttnState(*memory)

    def _with_sinks(self, q, k, v, state: AttnState) -> tuple[torch.Tensor, AttnState]:
        """Attention over ``[sink slots ; memory ; segment]`` (:func:`attend_with_sinks`)."""
        y, memory, sinks = attend_with_sinks(
            q, k, v, (state.keys, state.values, state.valid), (state.sink_keys, state.sink_values, state.sink_valid),
            self.options.window, self.options.rope_base,
        )
        return self._project(y), AttnState(*memory, *sinks)

    def _project(self, y: torch.Tensor) -> torch.Tensor:
        """Heads ``[B, H, T, D]`` -> output ``[B, T, d_model]``."""
        B, _, T, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(B, T, self.d_model))

    def step(self, x: torch.Tensor, state: AttnState) -> tuple[torch.Tensor, AttnState]:
        y, state = self.forward_parallel(x[:, None], state)
        return y[:, 0], state
