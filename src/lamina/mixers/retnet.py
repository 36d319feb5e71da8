"""RetNet: multi-scale retention, a linear attention with a fixed decay per head.

Sun, Dong, Huang, Ma, Xia, Xue, Wang & Wei 2023, "Retentive Network: A
Successor to Transformer for Large Language Models", sections 2.1-2.3, per head h:

    gamma_h = 1 - 2^(-5 - h)                          fixed, h = 0 .. heads-1
    S_t = gamma_h S_{t-1} + k_t^T v_t                 q, k rotated by their position (xPos's rotation)
    o_t = q_t S_t / sqrt(d_k / heads)
    y_t = (swish(x_t W_G) * GroupNorm_heads(o)) W_O

Keys and values are ``d * expand_k`` and ``d * expand_v`` wide (``expand_v = 2``
as in the paper, section 3.1). Positions use the rotary rotation only
(:func:`lamina.ops.rotary.rotary`, as flash-linear-attention and torchscale do;
the decay plays the part of xPos's length-extrapolation scaling).

Positions never grow with the stream: each call rotates its tokens by their
offset inside the call, and the state is handed on rotated by minus the call's
length, so it is always expressed relative to the next token. Because a
rotation of the keys passes through the sum ``S = sum gamma^(t-s) k_s^T v_s``,
this equals rotating every key by its absolute position. The paper's
normalisation of the decay and retention scores (section 2.2) is not needed:
GroupNorm is scale invariant and the op is stable without it.

Initialisation: the model's (every ``nn.Linear`` normal(0, 0.02), ``out`` scaled
for depth); GroupNorm starts at weight 1, bias 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lamina.errors import LaminaError
from lamina.mixers.base import Mixer
from lamina.mixers.registry import register
from lamina.mixers.state import MatrixState
from lamina.mixers.parts.widths import expanded_width
from lamina.ops.gla import gla, gla_step
from lamina.ops.rotary import rotary


@dataclass
class RetNetOptions:
    heads: int = 4
    expand_k: float = 1.0  # query/key width = d_model * expand_k
    expand_v: float = 2.0  # value width = d_model * expand_v
    rope_base: float = 10000.0
    norm_eps: float = 1e-5


@register("retnet")
class RetNet(Mixer):
    Options = RetNetOptions
    forms = ("recurrent", "chunk")

    def __init__(self, d_model: int, options: RetNetOptions, layer_idx: int = 0, n_layers: int = 1):
        super().__init__(d_model, options, layer_idx, n_layers)
        self.heads = options.heads
        self.key_dim = expanded_width("retnet", d_model, options.expand_k, options.heads, "expand_k")
        self.value_dim = expanded_width("retnet", d_model, options.expand_v, options.heads, "expand_v")
        if (self.key_dim // self.heads) % 2:
            raise LaminaError(
                f"retnet: the key width per head (d_model * expand_k / heads = {self.key_dim // self.heads}) "
                "must be even for the rotation; change expand_k or heads"
            )
        self.qkv = nn.Linear(d_model, 2 * self.key_dim + self.value_dim, bias=False)
        self.g_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.norm = nn.GroupNorm(self.heads, self.value_dim, eps=options.norm_eps)
        self.out = nn.Linear(self.value_dim, d_model, bias=False)

    def init_state(self, batch: int, device=None, dtype=None) -> MatrixState:
        dtype = torch.promote_types(dtype or torch.float32, torch.float32)
        shape = (batch, self.heads, self.key_dim // self.heads, self.value_dim // self.heads)
        return MatrixState(torch.zeros(shape, device=device, dtype=dtype))

    def state_size(self) -> int:
        return self.key_dim * self.value_dim // self.heads

    def log_decay(self, dtype: torch.dtype, device=None) -> torch.Tensor:
        """``log(gamma_h) = log(1 - 2^(-5-h))`` per head."""
        h = torch.arange(self.heads, device=device, dtype=dtype)
        return torch.log1p(-torch.exp2(-5.0 - h))

    def _inputs(self, x: torch.Tensor):
        """Rotated q, k ``[B, T, H, d_k/H]``, v ``[B, T, H, d_v/H]`` and the log decay ``[B, T, H]``."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        q, k, v = (t.unflatten(-1, (self.heads, -1)) for t in (q, k, v))
        positions = torch.arange(T, device=x.device)
        q, k = rotary(q, positions, self.options.rope_base), rotary(k, positions, self.options.rope_base)
        acc = torch.promote_types(x.dtype, torch.float32)
        g = self.log_decay(acc, x.device).expand(B, T, self.heads)
        return q, k, v, g

    def _hand_on(self, state: torch.Tensor, length: int) -> torch.Tensor:
        """Re-express the state relative to the next token: rotate its keys by ``-length``."""
        keys_last = state.permute(0, 3, 1, 2)  # [B, V, H, K]: rotary's [B, T, H, D] layout
        positions = torch.full((keys_last.shape[1],), -length, device=state.device)
        return rotary(keys_last, positions, self.options.rope_base).permute(0, 2, 3, 1)

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        normed = self.norm(o.flatten(-2).reshape(-1, self.value_dim)).view(*x.shape[:-1], self.value_dim)
        return self.out(F.silu(self.g_proj(x)) * normed)

    def forward_chunk(self, x: torch.Tensor, state: MatrixState) -> tuple[torch.Tensor, MatrixState]:
        q, k, v, g = self._inputs(x)
        scale = (self.key_dim // self.heads) ** -0.5
        o, last = gla(q, k, v, g, scale=scale, initial_state=state.S, output_final_state=True)
        return self._output(o, x), MatrixState(self._hand_on(last, x.shape[1]))

    def step(self, x_t: torch.Tensor, state: MatrixState) -> tuple[torch.Tensor, MatrixState]:
        q, k, v, g = (t[:, 0] for t in self._inputs(x_t[:, None]))
        o, last = gla_step(q, k, v, g, state.S, scale=(self.key_dim // self.heads) ** -0.5)
        return self._output(o, x_t), MatrixState(self._hand_on(last, 1))
