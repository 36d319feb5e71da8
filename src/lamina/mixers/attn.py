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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lamina.errors import LaminaError
from lamina.mixers import kv_memory
from lamina.mixers.base import Mixer, State, register
from lamina.ops.rotary import rotary


@dataclass
class AttnOptions:
    heads: int = 4
    mem_len: int = 0  # keys/values carried across segments (0: none)
    window: Optional[int] = None  # sliding-window size including the query itself (None: unlimited)
    rope_base: float = 10000.0


@register("attn")
class Attention(Mixer):
    Options = AttnOptions
    forms = ("recurrent", "parallel")

    def __init__(self, d_model: int, options: AttnOptions, layer_idx: int = 0, n_layers: int = 1):
        super().__init__(d_model, options, layer_idx, n_layers)
        if d_model % options.heads or (d_model // options.heads) % 2:
            raise LaminaError(
                f"attn: d_model {d_model} must split into {options.heads} heads of an even size; "
                "change model.d_model or the heads option"
            )
        if options.mem_len < 0 or (options.window is not None and options.window < 1):
            raise LaminaError("attn: mem_len must be >= 0 and window >= 1 (or null)")
        self.heads = options.heads
        self.head_dim = d_model // options.heads
        self.mem_len = options.mem_len
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def init_state(self, batch: int, device=None, dtype=None) -> State:
        shape = (batch, self.mem_len, self.heads, self.head_dim)
        zeros = torch.zeros(shape, device=device, dtype=dtype or torch.float32)
        return zeros, zeros.clone(), torch.zeros(batch, self.mem_len, device=device, dtype=torch.bool)

    def state_size(self) -> int:
        return 2 * self.mem_len * self.d_model

    def forward_parallel(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.head_dim).unbind(2)
        k_mem, v_mem, valid_mem = state
        if k_mem.shape[1] != self.mem_len:
            raise ValueError(f"attn state holds {k_mem.shape[1]} tokens but mem_len is {self.mem_len}")
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
        y = self.out(y.transpose(1, 2).reshape(B, T, self.d_model))
        return y, kv_memory.keep_last(state, (k_all, v_all, valid))  # kept in fp32

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        y, state = self.forward_parallel(x[:, None], state)
        return y[:, 0], state
