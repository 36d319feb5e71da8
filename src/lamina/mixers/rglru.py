"""RG-LRU and Hawk's recurrent block: a gated linear recurrence behind a short causal conv.

De, Smith, Fernando et al., "Griffin: Mixing Gated Linear Recurrences with
Local Attention for Efficient Language Models" (2024), section 2.4. The
Real-Gated Linear Recurrent Unit, per channel of its input ``u_t``:

    r_t = sigmoid(W_a u_t + b_a)             recurrence gate
    i_t = sigmoid(W_x u_t + b_x)             input gate
    a_t = a^(c r_t),  a = sigmoid(Lambda),  c = 8
    h_t = a_t h_{t-1} + sqrt(1 - a_t^2) (i_t u_t)

run as one gated scan with ``log a_t = c r_t log sigmoid(Lambda)`` (never
above 0) and ``sqrt(1 - a_t^2) = sqrt(-expm1(2 log a_t))``, exact as
``a_t -> 1`` (:func:`lamina.ops.gates.lru_normalizer`). Gates and
normaliser are computed in fp32 (or wider) whatever the activations' dtype,
so the square root keeps its true gradient (finite: it is clamped where
``1 - a_t^2`` rounds to 0) instead of recurrentgemma's clip at 1000.

The recurrent block (figure 2c) makes two branches of width ``width`` from
``x``: ``GeLU(x W_y)`` and ``RG-LRU(Conv1D(x W_u))`` with a causal depthwise
conv of ``conv_width`` taps (4 in the paper); their product goes through
``out`` back to ``d_model``. ``width`` defaults to ``4/3 d_model`` (about the
paper's RNN width), rounded up to a multiple of ``heads``. The gate weights
``W_a``, ``W_x`` are block-diagonal as in the paper: ``heads`` dense
``width/heads``-square blocks (``heads: 1`` is a dense gate).

State: ``(h [B, width], last conv_width - 1 conv inputs [B, conv_width - 1, width])``,
both fp32, so ``width * conv_width`` floats per sequence; both are carried
across segments, and a segment continues exactly where the previous one stopped.

Initialisation: ``Lambda`` so that ``a^c`` is uniform in [0.9, 0.999]
(section 2.4; recurrentgemma draws ``a`` itself on a ring in that range
instead); the gate blocks N(0, 0.02) with zero biases, like every linear
layer of lamina's model; the projections ``W_y``, ``W_u`` (``in_proj``) and
``out`` are the model's (N(0, 0.02), ``out`` scaled by ``1/sqrt(2L)``); the
conv taps normal with variance ``1 / (3 conv_width)`` (that of PyTorch's
``Conv1d`` default, which Mamba keeps) and a zero bias. recurrentgemma's conv
variance ``0.01 / conv_width`` goes with its variance-``1/D`` projections;
beside lamina's smaller ones it learned slower (d_model 64, two layers, 400
steps on stdlib: 3.62 against 3.51 bits per byte).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lamina.errors import LaminaError
from lamina.mixers.base import Mixer
from lamina.mixers.registry import register
from lamina.ops.conv import causal_conv, causal_conv_step
from lamina.ops.gates import log_sigmoid, lru_normalizer
from lamina.ops.scan import gated_scan, gated_scan_step

C = 8.0  # the fixed scale of the recurrence gate's exponent (section 2.4)
A_POW_C_RANGE = (0.9, 0.999)  # a^c is drawn uniformly from this range at initialisation


class RGLRUState(NamedTuple):
    h: torch.Tensor  # [B, width], fp32 or wider
    conv: torch.Tensor  # the last conv_width - 1 conv inputs [B, conv_width - 1, width]


@dataclass
class RGLRUOptions:
    width: Optional[int] = None  # recurrent width (None: 4/3 d_model rounded up to a multiple of heads)
    heads: int = 1  # diagonal blocks of the gate weights (1: dense gates)
    conv_width: int = 4  # taps of the causal conv before the RG-LRU


@register("rglru")
class RGLRU(Mixer):
    Options = RGLRUOptions
    forms = ("recurrent", "chunk")

    def __init__(self, d_model: int, options: RGLRUOptions, layer_idx: int = 0, n_layers: int = 1):
        super().__init__(d_model, options, layer_idx, n_layers)
        heads = options.heads
        width = options.width if options.width is not None else heads * math.ceil(4 * d_model / (3 * heads))
        if width % heads:
            raise LaminaError(
                f"rglru: width must be a positive multiple of heads ({heads}) or null for 4/3 d_model, "
                f"got {options.width!r}"
            )
        self.width, self.heads = width, heads
        self.in_proj = nn.Linear(d_model, 2 * width, bias=False)  # [GeLU branch, recurrent branch]
        self.conv_weight = nn.Parameter(torch.empty(width, options.conv_width))
        self.conv_bias = nn.Parameter(torch.empty(width))
        n = width // heads
        self.gate_weight = nn.Parameter(torch.empty(2, heads, n, n))  # [recurrence gate, input gate]
        self.gate_bias = nn.Parameter(torch.empty(2 * width))  # [recurrence | input]; a vector: no weight decay
        self.a_logit = nn.Parameter(torch.empty(width))  # Lambda: a = sigmoid(Lambda)
        self.out = nn.Linear(width, d_model, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The paper's ``Lambda``, N(0, 0.02) gates, the conv at PyTorch's default variance (see the module notes)."""
        with torch.no_grad():
            nn.init.normal_(self.conv_weight, std=1 / math.sqrt(3 * self.options.conv_width))
            nn.init.zeros_(self.conv_bias)
            nn.init.normal_(self.gate_weight, std=0.02)
            nn.init.zeros_(self.gate_bias)
            log_a = self.a_logit.new_empty(self.width).uniform_(*A_POW_C_RANGE).log_() / C
            self.a_logit.copy_(log_a - torch.log(-torch.expm1(log_a)))  # logit(a), from log a

    def init_state(self, batch: int, device=None, dtype=None) -> RGLRUState:
        dtype = torch.promote_types(dtype or torch.float32, torch.float32)
        h = torch.zeros(batch, self.width, device=device, dtype=dtype)
        conv = torch.zeros(batch, self.options.conv_width - 1, self.width, device=device, dtype=dtype)
        return RGLRUState(h, conv)

    def _lru_inputs(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The scan's input ``sqrt(1 - a_t^2) i_t u_t`` (in u's dtype) and ``log a_t`` (fp32 or wider)."""
        acc = torch.promote_types(u.dtype, torch.float32)
        blocks = u.unflatten(-1, (self.heads, -1))
        pre = torch.einsum("...hi,ghij->...ghj", blocks, self.gate_weight.to(u.dtype)).flatten(-2)
        r, i = (pre.to(acc) + self.gate_bias.to(acc).view(2, -1)).unbind(-2)
        log_a = C * torch.sigmoid(r) * log_sigmoid(self.a_logit.to(acc))
        b = lru_normalizer(log_a) * torch.sigmoid(i) * u.to(acc)
        return b.to(u.dtype), log_a

    def forward_chunk(self, x: torch.Tensor, state: RGLRUState) -> tuple[torch.Tensor, RGLRUState]:
        h0, conv0 = state
        y, u = self.in_proj(x).chunk(2, dim=-1)
        u, conv = causal_conv(u, self.conv_weight, self.conv_bias, initial_state=conv0, output_final_state=True)
        b, g = self._lru_inputs(u)
        h, last = gated_scan(b, g, initial_state=h0, output_final_state=True)
        return self.out(F.gelu(y) * h.to(x.dtype)), RGLRUState(last, conv.to(conv0.dtype))

    def step(self, x_t: torch.Tensor, state: RGLRUState) -> tuple[torch.Tensor, RGLRUState]:
        h0, conv0 = state
        y, u = self.in_proj(x_t).chunk(2, dim=-1)
        u, conv = causal_conv_step(u, self.conv_weight, self.conv_bias, conv0)
        b, g = self._lru_inputs(u)
        h = gated_scan_step(b, g, h0)
        return self.out(F.gelu(y) * h.to(x_t.dtype)), RGLRUState(h, conv.to(conv0.dtype))
