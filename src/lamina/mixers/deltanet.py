"""DeltaNet: linear attention whose matrix state is edited by the delta rule (``deltanet``).

Yang, Wang, Zhang, Shen & Kim, "Parallelizing Linear Transformers with the
Delta Rule over Sequence Length" (NeurIPS 2024): the delta rule of section 2,
trained with the chunkwise WY form of section 3, in the paper's modernised
layer ("DeltaNet Transformer", section 3): short convolutions, SiLU and
L2-normalised queries and keys, output RMSNorm, no output gate. The layer,
its equations and its initialisation are :mod:`lamina.mixers.parts.delta_rule`
(shared with ``gated_deltanet``, :mod:`lamina.mixers.gated_deltanet`).
"""

from __future__ import annotations

from lamina.mixers.parts.delta_rule import DeltaNetOptions, DeltaRuleMixer
from lamina.mixers.registry import register


@register("deltanet")
class DeltaNet(DeltaRuleMixer):
    """The delta rule without decay (DeltaNet)."""

    Options = DeltaNetOptions

    def __init__(self, d_model: int, options: DeltaNetOptions, layer_idx: int = 0, n_layers: int = 1):
        super().__init__(d_model, options, layer_idx, n_layers)
        self.reset_parameters()
