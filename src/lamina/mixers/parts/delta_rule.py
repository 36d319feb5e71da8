"""The delta-rule layer DeltaNet and Gated DeltaNet share (a part, not a mixer).

Per head (``K = head_dim``, ``V = head_dim * expand_v``), for a token ``x_t``::

    q, k, v   = SiLU(conv(x W_q)), SiLU(conv(x W_k)), SiLU(conv(x W_v))   short causal conv per channel
    q, k      = q / ||q||, k / ||k||                                     so every transition is a contraction
    beta_t    = sigmoid(x_t W_beta)                                      write strength
    alpha_t   = exp(-exp(A_log) * softplus(x_t W_a + dt_bias))           decay (gated_deltanet; 1 for deltanet)
    S_t       = alpha_t (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t
    o_t       = q_t S_t / sqrt(K)
    y_t       = (RMSNorm(o_t) [* SiLU(x_t W_g)]) W_out                   per-head norm, optional swish gate

The delta rule itself is the shared op :mod:`lamina.ops.delta` (log decay
``g = -exp(A_log) * softplus(...)`` passed in log space); the short
convolution is :mod:`lamina.ops.conv`, one convolution over the concatenated
q, k, v channels. The state is a :class:`~lamina.mixers.state.MatrixConvState`,
``S [B, H, K, V]`` and ``conv [B, conv_width - 1, H (2K + V)]`` in fp32 (or
wider), ``conv`` None without the convolution.

Initialisation: every ``nn.Linear`` is left to the model (N(0, 0.02), the
output projection ``out`` scaled for depth). The convolution weights use
PyTorch's ``Conv1d`` default, U(-1/sqrt(conv_width), 1/sqrt(conv_width)), as
fla's ``ShortConvolution`` (the papers' code) does, without bias.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lamina.errors import LaminaError
from lamina.mixers.base import Mixer
from lamina.mixers.state import MatrixConvState
from lamina.ops.conv import causal_conv, causal_conv_step
from lamina.ops.delta import delta_rule, delta_rule_step


@dataclass
class DeltaNetOptions:
    heads: int = 4
    head_dim: Optional[int] = None  # query/key width K per head (None: d_model // heads)
    expand_v: float = 1.0  # value width per head V = head_dim * expand_v (an integer)
    conv_width: int = 4  # short causal convolution over q, k, v (width in tokens)
    use_conv: bool = True
    use_gate: bool = False  # swish output gate (DeltaNet's paper has none)


class DeltaRuleMixer(Mixer):
    """What DeltaNet and Gated DeltaNet share: projections, convolution, the op, the output path.

    A subclass registers itself and may define :meth:`log_decay` (none: no decay).
    """

    forms = ("recurrent", "chunk")

    def __init__(self, d_model: int, options: DeltaNetOptions, layer_idx: int = 0, n_layers: int = 1):
        super().__init__(d_model, options, layer_idx, n_layers)
        heads, head_dim = options.heads, options.head_dim
        if head_dim is None:
            if d_model % heads:
                raise LaminaError(
                    f"{self.name}: d_model {d_model} does not split into {heads} heads; "
                    "change the heads option or set head_dim"
                )
            head_dim = d_model // heads
        value_dim = head_dim * options.expand_v
        if value_dim != int(value_dim):
            raise LaminaError(
                f"{self.name}: head_dim * expand_v = {head_dim} * {options.expand_v} must be a positive integer; "
                "change expand_v or head_dim"
            )
        self.heads, self.key_dim, self.value_dim = heads, head_dim, int(value_dim)
        H, K, V = heads, self.key_dim, self.value_dim
        self.qkv = nn.Linear(d_model, H * (2 * K + V), bias=False)
        self.beta_proj = nn.Linear(d_model, H, bias=False)
        self.conv_weight = nn.Parameter(torch.empty(H * (2 * K + V), options.conv_width)) if options.use_conv else None
        self.g_proj = nn.Linear(d_model, H * V, bias=False) if options.use_gate else None
        self.norm = nn.RMSNorm(V, eps=1e-5)
        self.out = nn.Linear(H * V, d_model, bias=False)

    def reset_parameters(self) -> None:
        """Initialise what the model does not (it calls this after its own ``nn.Linear`` initialisation)."""
        if self.conv_weight is not None:
            bound = 1 / math.sqrt(self.options.conv_width)
            nn.init.uniform_(self.conv_weight, -bound, bound)

    # --- state ----------------------------------------------------------------------
    def init_state(self, batch: int, device=None, dtype=None) -> MatrixConvState:
        dtype = torch.promote_types(dtype or torch.float32, torch.float32)
        S = torch.zeros(batch, self.heads, self.key_dim, self.value_dim, device=device, dtype=dtype)
        if self.conv_weight is None:
            return MatrixConvState(S, None)
        channels = self.heads * (2 * self.key_dim + self.value_dim)
        return MatrixConvState(S, torch.zeros(batch, self.options.conv_width - 1, channels, device=device, dtype=dtype))

    def state_size(self) -> int:
        """``H K V`` for the matrix state, plus ``(conv_width - 1) H (2K + V)`` for the convolution's inputs."""
        H, K, V = self.heads, self.key_dim, self.value_dim
        conv = (self.options.conv_width - 1) * H * (2 * K + V) if self.options.use_conv else 0
        return H * K * V + conv

    # --- the pieces -----------------------------------------------------------------
    def log_decay(self, x: torch.Tensor) -> torch.Tensor | None:
        """``g [..., H]`` (log of the decay per head), or None for no decay."""
        return None

    def _inputs(self, x: torch.Tensor, conv_state: torch.Tensor | None, step: bool):
        """``q, k, v [..., H, D]``, ``beta, g [..., H]`` and the new conv state; x is ``[B, T, d]`` or ``[B, d]``."""
        acc = torch.promote_types(x.dtype, torch.float32)
        qkv = self.qkv(x)
        if conv_state is not None:
            if step:
                qkv, new_conv = causal_conv_step(qkv, self.conv_weight, None, conv_state)
            else:
                qkv, new_conv = causal_conv(qkv, self.conv_weight, initial_state=conv_state, output_final_state=True)
            conv_state = new_conv.to(conv_state.dtype)
        H, K, V = self.heads, self.key_dim, self.value_dim
        q, k, v = F.silu(qkv).split([H * K, H * K, H * V], dim=-1)
        # L2 norms in fp32 (or wider): the op relies on ||k|| <= 1.
        q = F.normalize(q.unflatten(-1, (H, K)).to(acc), dim=-1, eps=1e-6)
        k = F.normalize(k.unflatten(-1, (H, K)).to(acc), dim=-1, eps=1e-6)
        beta = torch.sigmoid(self.beta_proj(x).to(acc))
        return q, k, v.unflatten(-1, (H, V)), beta, self.log_decay(x), conv_state

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        o = self.norm(o.to(x.dtype))
        if self.g_proj is not None:
            o = o * F.silu(self.g_proj(x)).unflatten(-1, (self.heads, self.value_dim))
        return self.out(o.flatten(-2))

    # --- forms ----------------------------------------------------------------------
    def forward_chunk(self, x: torch.Tensor, state: MatrixConvState) -> tuple[torch.Tensor, MatrixConvState]:
        q, k, v, beta, g, conv = self._inputs(x, state.conv, step=False)
        o, S = delta_rule(q, k, v, beta, g, initial_state=state.S, output_final_state=True)
        return self._output(o, x), MatrixConvState(S, conv)

    def step(self, x_t: torch.Tensor, state: MatrixConvState) -> tuple[torch.Tensor, MatrixConvState]:
        q, k, v, beta, g, conv = self._inputs(x_t, state.conv, step=True)
        o, S = delta_rule_step(q, k, v, beta, g, state.S)
        return self._output(o, x_t), MatrixConvState(S, conv)
