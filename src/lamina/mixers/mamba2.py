"""Mamba2: the selective state space model in its state-space-duality (SSD) form.

Dao & Gu 2024, "Transformers are SSMs: Generalized Models and Efficient
Algorithms Through Structured State Space Duality", sections 7 (the Mamba-2
block) and 9.1, with mamba_ssm's Mamba2 defaults. Per head h:

    z, xBC, dt_raw = split(x W_in)                          one input projection
    x, B, C = split(silu(conv(xBC)))                        short causal depthwise conv (width 4)
    dt_t = softplus(dt_raw + dt_bias),  a_t = exp(dt_t A_h),  A_h = -exp(A_log_h)
    S_t = a_t S_{t-1} + (dt_t B_t)^T x_t                    scalar decay per head, B, C shared per group
    y_t = C_t S_t + D_h x_t
    out = RMSNorm_group(y * silu(z)) W_out

So the shared op runs with ``q = C``, ``k = dt * B``, ``v = x``, ``g = dt * A``
(``<= 0``) and no score scaling. The state is the matrix state plus the
convolution's last ``conv_width - 1`` inputs, so segments continue exactly.

Initialisation (mamba_ssm's Mamba2, section 9.1): ``A`` uniform in
``[a_min, a_max] = [1, 16]``; ``dt`` log-uniform in ``[dt_min, dt_max] =
[0.001, 0.1]`` floored at ``dt_floor``, stored as ``dt_bias = softplus^-1(dt)``;
``D = 1``; the convolution as PyTorch's ``Conv1d`` (uniform with bound
``1/sqrt(width)``); norm weight 1. The projections keep the model's
initialisation (normal(0, 0.02), ``out`` scaled for depth) rather than
PyTorch's default uniform.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lamina.errors import LaminaError
from lamina.mixers.base import Mixer
from lamina.mixers.registry import register
from lamina.mixers.state import MatrixConvState
from lamina.ops.conv import causal_conv, causal_conv_step
from lamina.ops.gates import init_ssm_decay, ssm_log_decay
from lamina.ops.gla import gla, gla_step


@dataclass
class Mamba2Options:
    expand: int = 2  # inner width = d_model * expand
    head_dim: int = 64  # channels of x per head (heads = inner width / head_dim)
    d_state: int = 128  # N: width of B and C, the state's key dimension
    groups: int = 1  # groups of heads sharing B and C (and one output-norm group each)
    conv_width: int = 4
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_floor: float = 1e-4
    a_min: float = 1.0
    a_max: float = 16.0
    norm_eps: float = 1e-5


@register("mamba2")
class Mamba2(Mixer):
    Options = Mamba2Options
    forms = ("recurrent", "chunk")

    def __init__(self, d_model: int, options: Mamba2Options, layer_idx: int = 0, n_layers: int = 1):
        super().__init__(d_model, options, layer_idx, n_layers)
        o = options
        self.inner = d_model * o.expand
        if self.inner % o.head_dim or (self.inner // o.head_dim) % o.groups:
            raise LaminaError(
                f"mamba2: head_dim = {o.head_dim} must divide d_model * expand = {self.inner} into a number of "
                f"heads divisible by groups = {o.groups}; change head_dim, expand, groups or model.d_model"
            )
        if o.dt_min > o.dt_max or o.a_min > o.a_max:
            raise LaminaError(
                f"mamba2: need dt_min <= dt_max and a_min <= a_max, got dt_min={o.dt_min}, dt_max={o.dt_max}, "
                f"a_min={o.a_min}, a_max={o.a_max}"
            )
        self.heads = self.inner // o.head_dim
        self.conv_dim = self.inner + 2 * o.groups * o.d_state
        self.in_proj = nn.Linear(d_model, self.inner + self.conv_dim + self.heads, bias=False)
        self.conv_weight = nn.Parameter(torch.empty(self.conv_dim, o.conv_width))
        self.conv_bias = nn.Parameter(torch.empty(self.conv_dim))
        self.dt_bias = nn.Parameter(torch.empty(self.heads))
        self.A_log = nn.Parameter(torch.empty(self.heads))
        self.D = nn.Parameter(torch.empty(self.heads))
        self.norm_weight = nn.Parameter(torch.empty(self.inner))
        self.out = nn.Linear(self.inner, d_model, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The SSM's own initialisation (module notes); the model calls it after its own."""
        o = self.options
        with torch.no_grad():
            bound = 1 / math.sqrt(o.conv_width)
            self.conv_weight.uniform_(-bound, bound)
            self.conv_bias.uniform_(-bound, bound)
            init_ssm_decay(self.dt_bias, self.A_log, dt_min=o.dt_min, dt_max=o.dt_max, dt_floor=o.dt_floor,
                           a_min=o.a_min, a_max=o.a_max)
            self.D.fill_(1.0)
            self.norm_weight.fill_(1.0)

    def init_state(self, batch: int, device=None, dtype=None) -> MatrixConvState:
        dtype = torch.promote_types(dtype or torch.float32, torch.float32)
        o = self.options
        ssm = torch.zeros(batch, self.heads, o.d_state, o.head_dim, device=device, dtype=dtype)
        conv = torch.zeros(batch, o.conv_width - 1, self.conv_dim, device=device, dtype=dtype)
        return MatrixConvState(ssm, conv)

    def state_size(self) -> int:
        return self.inner * self.options.d_state + (self.options.conv_width - 1) * self.conv_dim

    def _split(self, zxbcdt: torch.Tensor):
        return zxbcdt.split([self.inner, self.conv_dim, self.heads], dim=-1)

    def _ssm_inputs(self, xBC: torch.Tensor, dt_raw: torch.Tensor):
        """q = C, k = dt * B, v = x ``[..., H, *]`` and g = dt * A ``[..., H]`` (fp32 or wider)."""
        o = self.options
        x, B, C = F.silu(xBC).split([self.inner, o.groups * o.d_state, o.groups * o.d_state], dim=-1)
        g, dt = ssm_log_decay(dt_raw, self.dt_bias, self.A_log)
        B, C = (t.unflatten(-1, (o.groups, o.d_state)).repeat_interleave(self.heads // o.groups, -2) for t in (B, C))
        return C, (B * dt[..., None]).to(xBC.dtype), x.unflatten(-1, (self.heads, o.head_dim)), g

    def _output(self, y: torch.Tensor, v: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y = y + self.D.to(y.dtype)[:, None] * v
        gated = (y.flatten(-2) * F.silu(z)).unflatten(-1, (self.options.groups, -1))
        normed = F.rms_norm(gated, (gated.shape[-1],), eps=self.options.norm_eps).flatten(-2)
        return self.out(normed * self.norm_weight)

    def forward_chunk(self, x: torch.Tensor, state: MatrixConvState) -> tuple[torch.Tensor, MatrixConvState]:
        z, xBC, dt_raw = self._split(self.in_proj(x))
        xBC, conv_state = causal_conv(xBC, self.conv_weight, self.conv_bias, initial_state=state.conv,
                                      output_final_state=True)
        q, k, v, g = self._ssm_inputs(xBC, dt_raw)
        y, ssm_state = gla(q, k, v, g, scale=1.0, initial_state=state.S, output_final_state=True)
        return self._output(y, v, z), MatrixConvState(ssm_state, conv_state.to(state.conv.dtype))

    def step(self, x_t: torch.Tensor, state: MatrixConvState) -> tuple[torch.Tensor, MatrixConvState]:
        z, xBC, dt_raw = self._split(self.in_proj(x_t))
        xBC, conv_state = causal_conv_step(xBC, self.conv_weight, self.conv_bias, state.conv)
        q, k, v, g = self._ssm_inputs(xBC, dt_raw)
        y, ssm_state = gla_step(q, k, v, g, state.S, scale=1.0)
        return self._output(y, v, z), MatrixConvState(ssm_state, conv_state.to(state.conv.dtype))
