"""Rotary position embedding (Su et al. 2021, "RoFormer", section 3.4).

Pure function on ``[B, T, H, D]`` tensors; angles are computed in fp32 so that
long positions keep their precision under bf16 activations.
"""

from __future__ import annotations

import torch


def rotary(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate channel pairs ``(i, i + D/2)`` of ``x`` by ``position * base^(-2i/D)``.

    ``x``: ``[B, T, H, D]`` with even ``D``; ``positions``: ``[T]`` integers, or
    ``[B, T]`` where each sequence has its own.
    The score between a rotated query at p and a rotated key at s depends on
    ``p - s`` only, which is what lets attention memory be re-positioned freely.
    """
    half = x.shape[-1] // 2
    inv_freq = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = positions.to(torch.float32)[..., None] * inv_freq  # [(B,) T, half]
    cos = angles.cos().unsqueeze(-2)
    sin = angles.sin().unsqueeze(-2)
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return out.to(x.dtype)
