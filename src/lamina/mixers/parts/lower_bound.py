"""The depth-rising forget-gate lower bound shared by HGRN and HGRN2 (a helper, not a mixer).

Qin, Yang & Zhong 2023, "Hierarchically Gated Recurrent Neural Network for
Sequence Modeling", section 3.2, kept unchanged by HGRN2 (Qin et al. 2024,
section 3). The bounds are one ``[n_layers, d_model]`` parameter ``P`` owned by
the model and shared by every layer that declares :data:`SHARED`:
``gamma_l = sum_{k=1..l} softmax(P, 0)_k`` (``cumsum(softmax(P)) - softmax(P)_0``),
0 for the first layer and rising monotonically towards 1, so lower layers may
forget fast and upper layers are made to remember. ``P`` starts at zeros
(``gamma_l = l / L``). HGRN and HGRN2 layers of one model share the same table,
so the bound keeps rising with depth across a hybrid schedule.

The forget rate is ``lambda = gamma + (1 - gamma) * sigmoid(f)``; recurrences
need its log, and HGRN and HGRN2 its complement ``1 - lambda = (1 - gamma) * sigmoid(-f)``
as the input gate, computed here without subtracting from 1 (exact when
``lambda`` is near 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOWER_BOUNDS = "hgrn_lower_bounds"
SHARED = {LOWER_BOUNDS: lambda n_layers, d_model: torch.zeros(n_layers, d_model)}


def layer_lower_bound(table: torch.Tensor | None, layer_idx: int, dtype: torch.dtype) -> torch.Tensor | None:
    """``gamma`` of layer ``layer_idx`` per ``d_model`` channel, or None where it is 0 (no table, first layer)."""
    if table is None or layer_idx == 0:
        return None
    weights = torch.softmax(table.to(dtype), dim=0)
    return weights[1 : layer_idx + 1].sum(0)


def bounded_forget(logits: torch.Tensor, gamma: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log lambda, 1 - lambda)`` for ``lambda = gamma + (1 - gamma) * sigmoid(logits)`` (``gamma`` None: 0).

    ``lambda`` is formed directly and its log taken: its absolute error is that of ``lambda`` in the
    working dtype, what a recurrence multiplying by ``lambda`` would see anyway, at a fraction of the
    cost of staying in log space (``logaddexp`` made HGRN's training step 1.10x slower on CPU). The
    complement is exact as ``lambda -> 1``. The clamp keeps ``lambda`` (and the log's gradient) finite
    if a softmax weight underflows to 0.
    """
    if gamma is None:
        return F.logsigmoid(logits), torch.sigmoid(-logits)
    gamma = gamma.clamp_min(torch.finfo(gamma.dtype).tiny)
    keep = 1 - gamma
    return torch.addcmul(gamma, keep, torch.sigmoid(logits)).log(), keep * torch.sigmoid(-logits)
