"""HGRN: a gated linear recurrence whose forget gate has a lower bound rising with depth.

Qin, Yang & Zhong, "Hierarchically Gated Recurrent Neural Network for Sequence
Modeling" (NeurIPS 2023), in the real-valued form of flash-linear-attention's
HGRN layer. Per hidden channel (section 3):

    f_t = sigmoid(x_t W_f)                      forget gate
    lambda_t = gamma_l + (1 - gamma_l) f_t      lower-bounded forget rate
    i_t = silu(x_t W_i) * (1 - lambda_t)        input, tied to the forget rate
    h_t = lambda_t * h_{t-1} + i_t              (one gated scan, gates in log space)
    y_t = (RMSNorm(h_t) * silu(x_t W_g)) W_o    output gate

The lower bounds (section 3.2) are the model-wide table of
:mod:`lamina.mixers.parts.lower_bound`, shared with HGRN2 layers. It is declared per
``d_model`` because that is all the model knows; with ``expand_ratio > 1``
each bound is repeated over its expansion channels, so layers of different
expansion share one table. A mixer that is not bound to a model (or has
``use_lower_bound=False``) uses ``gamma = 0``.

Initialisation is left to the model (every ``nn.Linear`` normal(0, 0.02), the
output projection ``out`` scaled for depth, as in fla's HGRN); the mixer adds
nothing of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lamina.errors import LaminaError
from lamina.mixers.base import Mixer
from lamina.mixers.registry import register
from lamina.mixers.state import HiddenState
from lamina.mixers.parts.lower_bound import LOWER_BOUNDS, SHARED, bounded_forget, layer_lower_bound
from lamina.ops.norm import gated_rms_norm
from lamina.ops.scan import gated_scan, gated_scan_step

__all__ = ["HGRN", "HGRNOptions", "LOWER_BOUNDS"]


@dataclass
class HGRNOptions:
    expand_ratio: int = 1  # recurrent width = d_model * expand_ratio
    use_lower_bound: bool = True  # the depth-rising forget-gate bound (off: gamma = 0)


@register("hgrn")
class HGRN(Mixer):
    Options = HGRNOptions
    forms = ("recurrent", "chunk")
    shared_parameters = SHARED

    def __init__(self, d_model: int, options: HGRNOptions, layer_idx: int = 0, n_layers: int = 1):
        super().__init__(d_model, options, layer_idx, n_layers)
        if options.expand_ratio < 1:
            raise LaminaError(f"hgrn: expand_ratio must be an integer >= 1, got {options.expand_ratio}")
        self.hidden = d_model * options.expand_ratio
        self.i_proj = nn.Linear(d_model, self.hidden, bias=False)
        self.f_proj = nn.Linear(d_model, self.hidden, bias=False)
        self.g_proj = nn.Linear(d_model, self.hidden, bias=False)
        self.norm = nn.RMSNorm(self.hidden, eps=1e-5)  # its weight and eps, applied with the gate by gated_rms_norm
        self.out = nn.Linear(self.hidden, d_model, bias=False)

    def init_state(self, batch: int, device=None, dtype=None) -> HiddenState:
        dtype = torch.promote_types(dtype or torch.float32, torch.float32)
        return HiddenState(torch.zeros(batch, self.hidden, device=device, dtype=dtype))

    def lower_bound(self, dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
        """This layer's ``gamma`` per hidden channel, or None where it is 0."""
        if not self.options.use_lower_bound:
            return None
        gamma = layer_lower_bound(self.shared(LOWER_BOUNDS), self.layer_idx, dtype)
        return None if gamma is None else gamma.repeat_interleave(self.options.expand_ratio)

    def _inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The scan's input ``i`` (in x's dtype) and log forget gate ``g`` (fp32 or wider)."""
        acc = torch.promote_types(x.dtype, torch.float32)
        g, forget_complement = bounded_forget(self.f_proj(x).to(acc), self.lower_bound(acc))
        i = F.silu(self.i_proj(x)) * forget_complement  # (1 - lambda)
        return i.to(x.dtype), g

    def _output(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.out(gated_rms_norm(h, self.norm.weight, self.g_proj(x), self.norm.eps).to(x.dtype))

    def forward_chunk(self, x: torch.Tensor, state: HiddenState) -> tuple[torch.Tensor, HiddenState]:
        i, g = self._inputs(x)
        h, last = gated_scan(i, g, initial_state=state.h, output_final_state=True)
        return self._output(h, x), HiddenState(last)

    def step(self, x_t: torch.Tensor, state: HiddenState) -> tuple[torch.Tensor, HiddenState]:
        i, g = self._inputs(x_t)
        h = gated_scan_step(i, g, state.h)
        return self._output(h, x_t), HiddenState(h)
