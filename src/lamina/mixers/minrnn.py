"""minGRU and minLSTM: a GRU and an LSTM whose gates see only the current input.

Feng, Tung, Ahmed, Bengio & Hajimirsadeghi, "Were RNNs All We Needed?" (2024),
section 3. Without the hidden state in their gates both are the elementwise
linear recurrence ``h_t = a_t h_{t-1} + b_t``, so each runs as one gated scan
with its gates in log space (nothing overflows, no ``1 - z`` is formed):

    minGRU (3.1):   z_t = sigmoid(Lin_z(x_t))
                    h_t = (1 - z_t) h_{t-1} + z_t h~_t
    minLSTM (3.2):  f_t = sigmoid(Lin_f(x_t)),  i_t = sigmoid(Lin_i(x_t))
                    f'_t = f_t / (f_t + i_t),   i'_t = i_t / (f_t + i_t)
                    h_t = f'_t h_{t-1} + i'_t h~_t
    both:           y_t = h_t W_out

The candidate is ``h~_t = g(Lin_h(x_t))`` with the paper's log-space
activation ``g(x) = x + 1/2`` for ``x >= 0``, ``sigmoid(x)`` below (appendix
B.3; ``candidate: g``, the default, as in the paper's log-space code), or
section 3's plain ``h~_t = Lin_h(x_t)`` (``candidate: linear``). The paper
needs ``g`` because its log-space scan takes ``log h~``; lamina's scan keeps
values in linear space and gates in log space, so both are exact here.

The recurrent width is ``expand_ratio * d_model`` (the ``d_h`` of the
paper's ``Linear_{d_h}``); ``out`` projects back to ``d_model``. The state is
``h``, ``expand_ratio * d_model`` floats per sequence, in fp32.

Initialisation: the paper prescribes none; the model's applies (every
``nn.Linear`` N(0, 0.02) without bias, ``out`` scaled by ``1/sqrt(2L)``), so
gates start near 1/2.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from lamina.errors import LaminaError
from lamina.mixers.base import Mixer
from lamina.mixers.registry import register
from lamina.mixers.state import HiddenState
from lamina.ops.gates import candidate_g, interpolation_gates, normalized_gates
from lamina.ops.scan import gated_scan, gated_scan_step

CANDIDATES = ("g", "linear")


@dataclass
class MinRNNOptions:
    expand_ratio: int = 1  # recurrent width = d_model * expand_ratio
    candidate: Literal["g", "linear"] = "g"  # h~ = g(Lin(x)) (appendix B.3) or Lin(x) (section 3)


class _MinRNN(Mixer):
    """One input projection (``n_gates`` gates and the candidate), a gated scan, ``out``."""

    Options = MinRNNOptions
    forms = ("recurrent", "chunk")
    n_gates: ClassVar[int]

    def __init__(self, d_model: int, options: MinRNNOptions, layer_idx: int = 0, n_layers: int = 1):
        super().__init__(d_model, options, layer_idx, n_layers)
        ratio = options.expand_ratio
        if options.candidate not in CANDIDATES:
            raise LaminaError(
                f"{self.name}: candidate must be one of {', '.join(CANDIDATES)}, got {options.candidate!r}"
            )
        self.hidden = d_model * ratio
        self.proj = nn.Linear(d_model, (self.n_gates + 1) * self.hidden, bias=False)
        self.out = nn.Linear(self.hidden, d_model, bias=False)

    def init_state(self, batch: int, device=None, dtype=None) -> HiddenState:
        dtype = torch.promote_types(dtype or torch.float32, torch.float32)
        return HiddenState(torch.zeros(batch, self.hidden, device=device, dtype=dtype))

    @abc.abstractmethod
    def log_gates(self, *pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log decay, log input weight)`` from the gates' pre-activations."""

    def _inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The scan's input ``b`` (in x's dtype) and log decay ``g`` (fp32 or wider)."""
        acc = torch.promote_types(x.dtype, torch.float32)
        *gates, candidate = self.proj(x).to(acc).chunk(self.n_gates + 1, dim=-1)
        if self.options.candidate == "g":
            candidate = candidate_g(candidate)
        g, log_w = self.log_gates(*gates)
        return (torch.exp(log_w) * candidate).to(x.dtype), g

    def forward_chunk(self, x: torch.Tensor, state: HiddenState) -> tuple[torch.Tensor, HiddenState]:
        b, g = self._inputs(x)
        h, last = gated_scan(b, g, initial_state=state.h, output_final_state=True)
        return self.out(h.to(x.dtype)), HiddenState(last)

    def step(self, x_t: torch.Tensor, state: HiddenState) -> tuple[torch.Tensor, HiddenState]:
        b, g = self._inputs(x_t)
        h = gated_scan_step(b, g, state.h)
        return self.out(h.to(x_t.dtype)), HiddenState(h)


@register("mingru")
class MinGRU(_MinRNN):
    """``h_t = (1 - z_t) h_{t-1} + z_t h~_t``: decay ``log(1 - z)``, input weight ``log z``."""

    n_gates = 1

    def log_gates(self, a_z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return interpolation_gates(a_z)


@register("minlstm")
class MinLSTM(_MinRNN):
    """``h_t = f'_t h_{t-1} + i'_t h~_t`` with forget and input gates normalised to sum to 1."""

    n_gates = 2

    def log_gates(self, a_f: torch.Tensor, a_i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return normalized_gates(a_f, a_i)
