"""Attention logit biases made of log gates summed between key and query.

The Forgetting Transformer (Lin et al. 2025, section 3) adds
``D_ij = sum_{j < l <= i} log f_l`` to the logit of query ``i`` and key ``j``.
Each span is summed on its own (the "segsum" of Mamba2's SSD, Dao and Gu 2024)
instead of taken as a difference ``F_i - F_j`` of one running
cumulative sum: all terms are ``<= 0``, so a sum of them is exact to rounding,
whereas the difference loses ``|F| * 1e-7`` in fp32 and ``|F|`` grows with the
segment length.
"""

from __future__ import annotations

import torch

from lamina.ops.precision import outside_autocast


def segsum(g: torch.Tensor) -> torch.Tensor:
    """``[..., L] -> [..., L, L]``: ``sum_{s < r <= t} g_r`` for ``s <= t``, ``-inf`` above the diagonal.

    Each entry is summed over its own segment (no difference of cumulative sums),
    so it is exact to rounding and never positive.
    """
    L = g.shape[-1]
    ones = torch.ones(L, L, dtype=torch.bool, device=g.device)
    terms = g[..., :, None].expand(*g.shape, L).masked_fill(~ones.tril(-1), 0.0)  # [t, s] = g_t for t > s
    return terms.cumsum(-2).masked_fill(~ones.tril(), float("-inf"))


@outside_autocast
def forget_bias(log_f: torch.Tensor, memory_decay: torch.Tensor) -> torch.Tensor:
    """FoX's decay bias of a segment's queries to ``[memory ; segment]`` keys, in fp32 (or wider).

    ``log_f``: ``[B, T, H]`` log forget gates of the segment (``<= 0``).
    ``memory_decay``: ``[B, M, H]``, for each memory key the sum of ``log f``
    after it up to the segment's start (``<= 0``), so the bias to memory keys
    is exact whatever the segmentation. Returns ``[B, H, T, M + T]``: the sum
    of ``log f`` over ``(key, query]``, ``-inf`` for segment keys after the query.
    """
    acc = torch.promote_types(log_f.dtype, torch.float32)
    g = log_f.to(acc).transpose(1, 2)  # [B, H, T]
    to_memory = g.cumsum(-1)[..., :, None] + memory_decay.to(acc).transpose(1, 2)[..., None, :]
    return torch.cat([to_memory, segsum(g)], dim=-1)
