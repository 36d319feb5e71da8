"""HGRN2: HGRN with its state expanded by an outer product, a gated linear attention.

Qin, Yang, Sun, Shen, Li, Sun & Zhong 2024, "HGRN2: Gated Linear RNNs with
State Expansion", section 3 (with HGRN's lower bound, section 3.2 of HGRN).
Per head, with ``f_t`` HGRN's lower-bounded forget gate:

    f_t = gamma_l + (1 - gamma_l) sigmoid(x_t W_f)          decay, per key channel
    S_t = diag(f_t) S_{t-1} + (1 - f_t)^T i_t               k = 1 - f (no extra parameters), v = i = x W_i
    o_t = swish(x_t W_q) S_t                                the output gate becomes the query
    y_t = RMSNorm(o) W_o

The forget width is ``d_model`` split into ``d_model / expand_ratio`` heads of
``expand_ratio`` key channels (the paper's expansion ratio, 128 in its
experiments); each head's values are ``expand_ratio`` wide too, so the state is
``expand_ratio * d_model`` floats, ``expand_ratio`` times HGRN's. The log
decay and ``1 - f`` come from the shared lower-bound helper
(:mod:`lamina.mixers.parts.lower_bound`), whose table is the same one HGRN layers
use. No score scaling (the paper's ``o_t S_t``; the RMSNorm is scale invariant).

Initialisation: the model's (every ``nn.Linear`` normal(0, 0.02), ``out``
scaled for depth) and a zero lower-bound table (``gamma_l = l / L``), as in
flash-linear-attention's HGRN2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lamina.errors import LaminaError
from lamina.mixers.base import Mixer
from lamina.mixers.registry import register
from lamina.mixers.state import MatrixState
from lamina.mixers.parts.lower_bound import LOWER_BOUNDS, SHARED, bounded_forget, layer_lower_bound
from lamina.ops.gla import gla, gla_step


@dataclass
class HGRN2Options:
    expand_ratio: Optional[int] = None  # key channels per head (None: min(128, d_model), the paper's 128)
    use_lower_bound: bool = True  # the depth-rising forget-gate bound (off: gamma = 0)
    norm_eps: float = 1e-5


@register("hgrn2")
class HGRN2(Mixer):
    Options = HGRN2Options
    forms = ("recurrent", "chunk")
    shared_parameters = SHARED

    def __init__(self, d_model: int, options: HGRN2Options, layer_idx: int = 0, n_layers: int = 1):
        super().__init__(d_model, options, layer_idx, n_layers)
        ratio = min(128, d_model) if options.expand_ratio is None else options.expand_ratio
        if d_model % ratio:
            raise LaminaError(
                f"hgrn2: expand_ratio must divide d_model = {d_model}, got {ratio}; "
                "set expand_ratio (or model.d_model) so that d_model / expand_ratio heads are whole"
            )
        self.expand_ratio = ratio
        self.heads = d_model // ratio
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.f_proj = nn.Linear(d_model, d_model, bias=False)
        self.i_proj = nn.Linear(d_model, d_model, bias=False)
        self.norm = nn.RMSNorm(d_model, eps=options.norm_eps)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def init_state(self, batch: int, device=None, dtype=None) -> MatrixState:
        dtype = torch.promote_types(dtype or torch.float32, torch.float32)
        size = self.expand_ratio
        return MatrixState(torch.zeros(batch, self.heads, size, size, device=device, dtype=dtype))

    def state_size(self) -> int:
        return self.expand_ratio * self.d_model

    def lower_bound(self, dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
        """This layer's ``gamma`` per forget channel, or None where it is 0."""
        if not self.options.use_lower_bound:
            return None
        return layer_lower_bound(self.shared(LOWER_BOUNDS), self.layer_idx, dtype)

    def _inputs(self, x: torch.Tensor):
        """q, k, v ``[..., H, expand_ratio]`` in x's dtype and the log decay in fp32 or wider."""
        acc = torch.promote_types(x.dtype, torch.float32)
        g, k = bounded_forget(self.f_proj(x).to(acc), self.lower_bound(acc))  # k = 1 - f
        heads = lambda t: t.unflatten(-1, (self.heads, -1))  # noqa: E731
        return heads(F.silu(self.q_proj(x))), heads(k.to(x.dtype)), heads(self.i_proj(x)), heads(g)

    def _output(self, o: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(o.flatten(-2).to(self.norm.weight.dtype)))

    def forward_chunk(self, x: torch.Tensor, state: MatrixState) -> tuple[torch.Tensor, MatrixState]:
        q, k, v, g = self._inputs(x)
        o, last = gla(q, k, v, g, scale=1.0, initial_state=state.S, output_final_state=True)
        return self._output(o), MatrixState(last)

    def step(self, x_t: torch.Tensor, state: MatrixState) -> tuple[torch.Tensor, MatrixState]:
        o, last = gla_step(*self._inputs(x_t), state.S, scale=1.0)
        return self._output(o), MatrixState(last)
