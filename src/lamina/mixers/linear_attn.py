"""Linear attention: softmax replaced by a feature map, so attention is a running sum.

Katharopoulos, Vyas, Pappas & Fleuret 2020, "Transformers are RNNs: Fast
Autoregressive Transformers with Linear Attention", sections 3.2-3.4, per head:

    S_t = S_{t-1} + phi(k_t)^T v_t,    z_t = z_{t-1} + phi(k_t)        (no decay: g = 0)
    o_t = phi(q_t) S_t / (phi(q_t) . z_t + eps)                        normalize=True (the paper)
    o_t = phi(q_t) S_t / sqrt(d_k / heads)                             normalize=False
    y_t = o W_o

``phi`` is ``elu(x) + 1`` (the paper's section 3.2.1), ``relu`` or the identity.
The normaliser ``z`` rides along as one extra value column of ones, so the
state is ``S`` and ``z`` side by side (``[B, H, d_k/H, d_v/H + 1]``) and one op
call computes both. Normalising needs a non-negative ``phi`` (elu or relu).
Without it nothing bounds the outputs' growth with length; they stay finite.

Initialisation: the model's (every ``nn.Linear`` normal(0, 0.02), ``out``
scaled for depth).
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
from lamina.ops.gla import gla, gla_step

FEATURE_MAPS = {
    "elu": lambda x: F.elu(x) + 1,
    "relu": F.relu,
    "identity": lambda x: x,
}


@dataclass
class LinearAttnOptions:
    heads: int = 4
    feature_map: str = "elu"  # elu (elu + 1, the paper), relu or identity
    normalize: bool = True  # divide by phi(q) . sum phi(k) (the paper); needs elu or relu
    eps: float = 1e-6  # added to the normaliser


@register("linear_attn")
class LinearAttention(Mixer):
    Options = LinearAttnOptions
    forms = ("recurrent", "chunk")

    def __init__(self, d_model: int, options: LinearAttnOptions, layer_idx: int = 0, n_layers: int = 1):
        super().__init__(d_model, options, layer_idx, n_layers)
        if options.feature_map not in FEATURE_MAPS:
            raise LaminaError(
                f"linear_attn: feature_map must be one of {', '.join(FEATURE_MAPS)}, got {options.feature_map!r}"
            )
        if options.normalize and options.feature_map == "identity":
            raise LaminaError("linear_attn: normalize=true needs a non-negative feature_map (elu or relu)")
        if d_model % options.heads:
            raise LaminaError(
                f"linear_attn: heads must divide d_model = {d_model}, got {options.heads}; "
                "change heads or model.d_model"
            )
        self.heads = options.heads
        self.head_dim = d_model // options.heads
        self.phi = FEATURE_MAPS[options.feature_map]
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def init_state(self, batch: int, device=None, dtype=None) -> MatrixState:
        dtype = torch.promote_types(dtype or torch.float32, torch.float32)
        values = self.head_dim + int(self.options.normalize)
        return MatrixState(torch.zeros(batch, self.heads, self.head_dim, values, device=device, dtype=dtype))

    def state_size(self) -> int:
        return self.d_model * (self.head_dim + int(self.options.normalize))

    def _inputs(self, x: torch.Tensor):
        """phi(q), phi(k), v (with a column of ones when normalising) ``[..., H, *]`` and g = 0 ``[..., H]``."""
        q, k, v = (t.unflatten(-1, (self.heads, -1)) for t in self.qkv(x).chunk(3, dim=-1))
        if self.options.normalize:
            v = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
        g = x.new_zeros(*x.shape[:-1], self.heads, dtype=torch.promote_types(x.dtype, torch.float32))
        return self.phi(q), self.phi(k), v, g

    def _output(self, o: torch.Tensor) -> torch.Tensor:
        if self.options.normalize:
            o = o[..., :-1] / (o[..., -1:] + self.options.eps)
        return self.out(o.flatten(-2))

    @property
    def scale(self) -> float:
        return 1.0 if self.options.normalize else self.head_dim**-0.5

    def forward_chunk(self, x: torch.Tensor, state: MatrixState) -> tuple[torch.Tensor, MatrixState]:
        o, last = gla(*self._inputs(x), scale=self.scale, initial_state=state.S, output_final_state=True)
        return self._output(o), MatrixState(last)

    def step(self, x_t: torch.Tensor, state: MatrixState) -> tuple[torch.Tensor, MatrixState]:
        o, last = gla_step(*self._inputs(x_t), state.S, scale=self.scale)
        return self._output(o), MatrixState(last)
