"""Pooling of consecutive groups along time: the parameter-free compression functions.

Rae et al. 2020, "Compressive Transformers", section 3.1: ``f_c`` maps ``c``
consecutive memories to one compressed memory; max and mean pooling with
kernel and stride ``c`` are the paper's parameter-free choices.
"""

from __future__ import annotations

import torch

POOLS = ("mean", "max")


def pool_groups(x: torch.Tensor, rate: int, how: str = "mean") -> torch.Tensor:
    """``x [B, N, ...]`` with ``N`` a multiple of ``rate`` -> ``[B, N // rate, ...]``: each run of ``rate`` pooled."""
    if how not in POOLS:
        raise ValueError(f"how must be one of {POOLS}, got {how!r}")
    B, N = x.shape[:2]
    if N % rate:
        raise ValueError(f"pool_groups needs a length that is a multiple of rate={rate}, got {N}")
    groups = x.reshape(B, N // rate, rate, *x.shape[2:])
    return groups.mean(2) if how == "mean" else groups.amax(2)
