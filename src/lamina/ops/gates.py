"""Gate arithmetic in log space for the elementwise recurrences (minGRU, minLSTM, RG-LRU).

Each function turns pre-activations into the log decay ``g <= 0`` that
:func:`lamina.ops.scan.gated_scan` takes, or into a factor on its input,
without forming a ``1 - x`` or a ``sqrt(1 - x)`` that loses precision (or
its gradient) when a gate is near 0 or 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def log_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """``log sigmoid(x)`` to rounding in fp32 and float64, with its exact gradient.

    ``-softplus(-x)`` with softplus' linear cut-off moved from 20 (an error of
    ``e^-20`` in float64) to 40 (below float64's rounding), so the float64
    references of the gates are exact.
    """
    return -F.softplus(-x, threshold=40.0)


def interpolation_gates(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log(1 - z), log z)`` for ``z = sigmoid(a)``: the decay and input weight of ``(1 - z) h + z x``."""
    return log_sigmoid(-a), log_sigmoid(a)


def normalized_gates(a_f: torch.Tensor, a_i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log f', log i')`` with ``f' = f / (f + i)``, ``i' = i / (f + i)``, ``f = sigmoid(a_f)``, ``i = sigmoid(a_i)``.

    With ``d = log i - log f``: ``log f' = -log(1 + e^d) = log sigmoid(-d)`` and
    ``log i' = log sigmoid(d)``, so neither ratio is ever formed and
    ``f' + i' = 1`` holds to rounding.
    """
    d = log_sigmoid(a_i) - log_sigmoid(a_f)
    return log_sigmoid(-d), log_sigmoid(d)


def candidate_g(x: torch.Tensor) -> torch.Tensor:
    """``g(x) = x + 1/2`` for ``x >= 0``, ``sigmoid(x)`` below: continuous, positive, linear for large ``x``.

    The candidate activation of the log-space minGRU and minLSTM (Feng et al.
    2024, "Were RNNs All We Needed?", appendix B.3).
    """
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def lru_normalizer(g: torch.Tensor) -> torch.Tensor:
    """``sqrt(1 - a^2)`` for the decay ``a = exp(g)``, ``g <= 0``: the LRU / RG-LRU input normalisation.

    ``1 - a^2 = -expm1(2 g)`` is exact as ``g -> 0``; the clamp at the smallest
    normal float keeps the square root's gradient finite where ``1 - a^2``
    rounds to 0 (the value changes by at most ``1e-19`` in fp32).
    """
    u = -torch.expm1(2 * g)
    return u.clamp_min(torch.finfo(u.dtype).tiny).sqrt()
