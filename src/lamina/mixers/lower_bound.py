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
need its log, and HGRN its complement ``1 - lambda = (1 - gamma) * sigmoid(-f)``
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


def bounded_log_forget(logits: torch.Tensor, gamma: torch.Tensor | None) -> torch.Tensor:
    """``log(gamma + (1 - gamma) * sigmoid(logits))`` (``logsigmoid(logits)`` when ``gamma`` is None).

    The clamp only matters if a softmax weight underflows to 0 (log 0 has no gradient).
    """
    log_f = F.logsigmoid(logits)
    if gamma is None:
        return log_f
    return torch.logaddexp(gamma.clamp_min(torch.finfo(gamma.dtype).tiny).log(), torch.log1p(-gamma) + log_f)


def bounded_forget(logits: torch.Tensor, gamma: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log lambda, 1 - lambda)`` for ``lambda = gamma + (1 - gamma) * sigmoid(logits)`` (``gamma`` None: 0).

    ``lambda >= gamma`` is formed directly and its log taken, fewer passes than
    :func:`bounded_log_forget`; the clamp keeps ``lambda`` (and the log's
    gradient) finite if a softmax weight underflows to 0.
    """
    if gamma is None:
        return F.logsigmoid(logits), torch.sigmoid(-logits)
    gamma = gamma.clamp_min(torch.finfo(gamma.dtype).tiny)
    keep = 1 - gamma
    return torch.addcmul(gamma, keep, torch.sigmoid(logits)).log(), keep * torch.sigmoid(-logits)
