"""Gate arithmetic in log space (minGRU, minLSTM, RG-LRU; Mamba2 and Gated DeltaNet's decay).

Each function turns pre-activations into the log decay ``g <= 0`` that
:func:`lamina.ops.scan.gated_scan` takes, or into a factor on its input,
without forming a ``1 - x`` or a ``sqrt(1 - x)`` that loses precision (or
its gradient) when a gate is near 0 or 1.
"""

from __future__ import annotations

import math

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


def ssm_log_decay(dt_raw: torch.Tensor, dt_bias: torch.Tensor, a_log: torch.Tensor) -> torch.Tensor:
    """Mamba2's per-head decay in log space: ``g = dt * A``, ``dt = softplus(dt_raw + dt_bias)``, ``A = -exp(a_log)``.

    Returns ``(g, dt)`` in fp32 or wider; ``g <= 0`` always.
    """
    acc = torch.promote_types(dt_raw.dtype, torch.float32)
    dt = F.softplus(dt_raw.to(acc) + dt_bias.to(acc))
    return -torch.exp(a_log.to(acc)) * dt, dt


@torch.no_grad()
def init_ssm_decay(dt_bias: torch.Tensor, a_log: torch.Tensor, *, dt_min: float = 1e-3, dt_max: float = 0.1,
                   dt_floor: float = 1e-4, a_min: float = 1.0, a_max: float = 16.0) -> None:
    """Mamba2's initialisation (Dao & Gu 2024): ``dt`` log-uniform in ``[dt_min, dt_max]`` (floored),
    stored as ``softplus^-1(dt)`` in ``dt_bias``; ``A`` uniform in ``[a_min, a_max]``, stored as ``log A``."""
    log_dt = torch.empty_like(dt_bias).uniform_(math.log(dt_min), math.log(dt_max))
    dt = log_dt.exp().clamp_min(dt_floor)
    dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
    a_log.copy_(torch.empty_like(a_log).uniform_(a_min, a_max).log())
