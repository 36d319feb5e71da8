"""Titans' neural memory as a layer (``titans``, MAL).

Behrouz, Zhong & Mirrokni 2025, "Titans: Learning to Memorize at Test Time",
section 4.3: the memory as a layer, with the paper's linear memory per head
(section 3.1) and the chunked training of section 3.2. The memory, its gates,
the stability scaling of ``theta`` and the initialisation are
:mod:`lamina.mixers.parts.neural_memory`; this layer reads it and adds the
output path of section 4.4, ``y_t = (RMSNorm(q_t M_t) * SiLU(x_t W_g)) W_out``.

The other Titans variants: the memory as a gate (``titans_mag``,
:mod:`lamina.mixers.titans_mag`) and as context (``titans_mac``,
:mod:`lamina.mixers.titans_mac`).

Left out: the paper's short depthwise convolutions after q, k, v, its deep
(MLP) memory, and persistent memory tokens for MAL.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lamina.mixers.base import Mixer
from lamina.mixers.parts.neural_memory import NeuralMemoryBranch, NeuralMemoryState, TitansOptions
from lamina.mixers.registry import register


@register("titans")
class Titans(Mixer):
    """Titans' neural memory as a layer (MAL, section 4.3), with a linear memory per head."""

    Options = TitansOptions
    forms = ("recurrent", "chunk")

    def __init__(self, d_model: int, options: TitansOptions, layer_idx: int = 0, n_layers: int = 1):
        super().__init__(d_model, options, layer_idx, n_layers)
        self.memory = NeuralMemoryBranch(d_model, options, self.name)
        H, V = self.memory.heads, self.memory.head_dim
        self.norm = nn.RMSNorm(V, eps=1e-5)
        self.g_proj = nn.Linear(d_model, H * V, bias=False)
        self.out = nn.Linear(H * V, d_model, bias=False)

    def reset_parameters(self) -> None:
        self.memory.reset_parameters()

    def init_state(self, batch: int, device=None, dtype=None) -> NeuralMemoryState:
        return self.memory.init_state(batch, device, dtype)

    def state_size(self) -> int:
        """``3 H K^2 + 1``: the memory, its momentum, the memory entering the chunk, and the position in it."""
        return self.memory.state_size()

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        o = self.norm(o.to(x.dtype)) * F.silu(self.g_proj(x)).unflatten(-1, (self.memory.heads, -1))
        return self.out(o.flatten(-2))

    def forward_chunk(self, x: torch.Tensor, state: NeuralMemoryState) -> tuple[torch.Tensor, NeuralMemoryState]:
        o, state = self.memory(x, state)
        return self._output(o, x), state

    def step(self, x_t: torch.Tensor, state: NeuralMemoryState) -> tuple[torch.Tensor, NeuralMemoryState]:
        o, state = self.memory.step(x_t, state)
        return self._output(o, x_t), state
