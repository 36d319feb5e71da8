"""Relative positions for attention: sinusoid embeddings of distances and the relative shift of scores.

Transformer-XL's relative positional encodings (Dai et al. 2019, section
3.3) score every query against every distance, then shift those scores so
that each lines up with its key.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sinusoid(distances: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """``[N]`` distances -> ``[N, dim]`` sinusoid embeddings (sines, then cosines), as in Vaswani et al."""
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, device=distances.device, dtype=torch.float64) / dim))
    angles = distances.to(torch.float64)[:, None] * inv_freq[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1).to(dtype)


def rel_shift(scores: torch.Tensor) -> torch.Tensor:
    """``[..., T, L]`` scores by reversed distance (column ``c`` is distance ``L-1-c``) -> by key.

    The pad-and-reshape trick: pad one zero column on the left, read the
    buffer as ``[L+1, T]``, drop its first row and read the rest as
    ``[T, L]``. Entry ``(i, j)`` then holds distance ``L-T+i-j`` for every key
    ``j <= L-T+i``; later keys hold junk and must be masked.
    """
    *lead, T, L = scores.shape
    padded = F.pad(scores, (1, 0)).view(*lead, L + 1, T)
    return padded[..., 1:, :].reshape(*lead, T, L)
