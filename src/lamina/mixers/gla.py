"""GLA: gated linear attention with a low-rank, data-dependent decay per key channel.

Yang, Wang, Shen, Panda & Kim, "Gated Linear Attention Transformers with
Hardware-Efficient Training" (ICML 2024), section 4.4 (the GLA layer), per head:

    alpha_t = sigmoid(x_t W_1 W_2 + b)^(1/tau)        W_1: d x 16, W_2: 16 x d_k, tau = 16
    S_t = diag(alpha_t) S_{t-1} + k_t^T v_t           q, k: d_k = d * expand_k, v: d_v = d * expand_v
    o_t = q_t S_t / sqrt(d_k / heads)
    y_t = (RMSNorm_head(o_t) * swish(x_t W_r)) W_o

The gate enters the op as its log, ``logsigmoid(x W_1 W_2 + b) / tau``, so no
``alpha^(1/tau)`` is ever formed. The output norm is an RMSNorm per head with
one weight shared by the heads (flash-linear-attention's fused norm-and-gate;
the paper writes LayerNorm). ``expand_k = 0.5`` and ``expand_v = 1`` as in the
paper's experiments, 4 heads.

Initialisation: the model's (every ``nn.Linear`` normal(0, 0.02), biases zero,
``out`` scaled for depth), so the decay starts near ``0.5^(1/16) = 0.96``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lamina.mixers.base import Mixer
from lamina.mixers.registry import register
from lamina.mixers.state import MatrixState
from lamina.mixers.parts.widths import expanded_width
from lamina.ops.gla import gla, gla_step


@dataclass
class GLAOptions:
    heads: int = 4
    expand_k: float = 0.5  # key (and decay) width = d_model * expand_k
    expand_v: float = 1.0  # value width = d_model * expand_v
    gate_rank: int = 16  # rank of the decay's projection W_1 W_2
    gate_temperature: float = 16.0  # tau: alpha = sigmoid(.)^(1/tau)
    norm_eps: float = 1e-5


@register("gla")
class GLA(Mixer):
    Options = GLAOptions
    forms = ("recurrent", "chunk")

    def __init__(self, d_model: int, options: GLAOptions, layer_idx: int = 0, n_layers: int = 1):
        super().__init__(d_model, options, layer_idx, n_layers)
        self.heads = options.heads
        self.key_dim = expanded_width("gla", d_model, options.expand_k, options.heads, "expand_k")
        self.value_dim = expanded_width("gla", d_model, options.expand_v, options.heads, "expand_v")
        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.gate_down = nn.Linear(d_model, options.gate_rank, bias=False)
        self.gate_up = nn.Linear(options.gate_rank, self.key_dim, bias=True)
        self.r_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.norm = nn.RMSNorm(self.value_dim // self.heads, eps=options.norm_eps)
        self.out = nn.Linear(self.value_dim, d_model, bias=False)

    def init_state(self, batch: int, device=None, dtype=None) -> MatrixState:
        dtype = torch.promote_types(dtype or torch.float32, torch.float32)
        shape = (batch, self.heads, self.key_dim // self.heads, self.value_dim // self.heads)
        return MatrixState(torch.zeros(shape, device=device, dtype=dtype))

    def state_size(self) -> int:
        return self.key_dim * self.value_dim // self.heads

    def _inputs(self, x: torch.Tensor):
        """q, k, v ``[..., H, d]`` in x's dtype and the log decay ``[..., H, d_k / H]`` in fp32 or wider."""
        acc = torch.promote_types(x.dtype, torch.float32)
        heads = lambda t: t.unflatten(-1, (self.heads, -1))  # noqa: E731
        g = F.logsigmoid(self.gate_up(self.gate_down(x)).to(acc)) / self.options.gate_temperature
        return heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)), heads(g)

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        gate = F.silu(self.r_proj(x)).unflatten(-1, (self.heads, -1))
        return self.out((self.norm(o.to(x.dtype)) * gate).flatten(-2))

    def forward_chunk(self, x: torch.Tensor, state: MatrixState) -> tuple[torch.Tensor, MatrixState]:
        q, k, v, g = self._inputs(x)
        scale = (self.key_dim // self.heads) ** -0.5
        o, last = gla(q, k, v, g, scale=scale, initial_state=state.S, output_final_state=True)
        return self._output(o, x), MatrixState(last)

    def step(self, x_t: torch.Tensor, state: MatrixState) -> tuple[torch.Tensor, MatrixState]:
        q, k, v, g = self._inputs(x_t)
        o, last = gla_step(q, k, v, g, state.S, scale=(self.key_dim // self.heads) ** -0.5)
        return self._output(o, x_t), MatrixState(last)
