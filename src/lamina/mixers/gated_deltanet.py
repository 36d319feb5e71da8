"""Gated DeltaNet: the delta rule with Mamba2's decay (``gated_deltanet``).

Yang, Kautz & Hatamizadeh, "Gated Delta Networks: Improving Mamba2 with Delta
Rule" (ICLR 2025): the gated delta rule (section 3.1) with Mamba2's
data-dependent scalar decay per head, ``alpha_t = exp(-exp(A_log) *
softplus(x_t W_a + dt_bias))``, in the token-mixer block of section 3.3
(figure 1), which adds a swish output gate. The rest of the layer is
DeltaNet's, :mod:`lamina.mixers.parts.delta_rule`.

Initialisation: the decay has Mamba2's parametrisation and is initialised as
mamba_ssm's Mamba2 (and lamina's ``mamba2``): ``A ~ U(1, 16)`` per head stored
as ``A_log``, and ``dt`` log-uniform in ``[0.001, 0.1]`` (floored at 1e-4)
stored through the inverse softplus as ``dt_bias``. (fla's Gated DeltaNet
layer draws ``A`` from ``U(0, 16)``; the lower bound 1 keeps ``log A``
finite.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lamina.mixers.parts.delta_rule import DeltaNetOptions, DeltaRuleMixer
from lamina.mixers.registry import register
from lamina.ops.gates import init_ssm_decay, ssm_log_decay


@dataclass
class GatedDeltaNetOptions(DeltaNetOptions):
    # The paper's defaults: values twice as wide as keys, and the swish output gate.
    # (Its 1.3B model, parameter-matched to Mamba2, uses heads=6, head_dim=256 at d_model=2048.)
    expand_v: float = 2.0
    use_gate: bool = True


@register("gated_deltanet")
class GatedDeltaNet(DeltaRuleMixer):
    """The gated delta rule: DeltaNet plus Mamba2's scalar decay per head and token."""

    Options = GatedDeltaNetOptions

    def __init__(self, d_model: int, options: GatedDeltaNetOptions, layer_idx: int = 0, n_layers: int = 1):
        super().__init__(d_model, options, layer_idx, n_layers)
        self.a_proj = nn.Linear(d_model, self.heads, bias=False)
        self.A_log = nn.Parameter(torch.empty(self.heads))
        self.dt_bias = nn.Parameter(torch.empty(self.heads))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The convolution as DeltaNet's; ``A`` and ``dt`` as Mamba2's (see the module notes)."""
        super().reset_parameters()
        init_ssm_decay(self.dt_bias, self.A_log)

    def log_decay(self, x: torch.Tensor) -> torch.Tensor:
        return ssm_log_decay(self.a_proj(x), self.dt_bias, self.A_log)[0]
