"""Ops choose their own precision: outside autocast, in their accumulation dtype.

An op casts its inputs to fp32 (or wider) where its numerics need it (the
state, decays, a triangular solve). Under ``torch.autocast`` its matrix
products would otherwise come back in bf16 and undo that, and some linear
algebra has no bf16 kernel at all. The mixers around the ops still run their
projections under autocast.
"""

from __future__ import annotations

import functools

import torch


def outside_autocast(op):
    """Decorator: run ``op`` with autocast off on the device of its first tensor argument."""

    @functools.wraps(op)
    def wrapper(*args, **kwargs):
        device = next(a.device.type for a in args if isinstance(a, torch.Tensor))
        if not torch.is_autocast_enabled(device):
            return op(*args, **kwargs)
        with torch.autocast(device, enabled=False):
            return op(*args, **kwargs)

    return wrapper


def acc_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """The accumulation dtype of an op: fp32, or wider if an input is wider (``None`` entries are skipped)."""
    out = torch.float32
    for t in tensors:
        if t is not None:
            out = torch.promote_types(out, t.dtype)
    return out


def check_matrix_state_inputs(op: str, q, k, v, initial_state) -> None:
    """Shapes shared by the matrix-state ops: ``q, k [B, T, H, K]``, ``v [B, T, H, V]``, state ``[B, H, K, V]``."""
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"{op} needs q and k of shape [B, T, H, K] and v of shape [B, T, H, V], got "
            f"{tuple(q.shape)}, {tuple(k.shape)} and {tuple(v.shape)}"
        )
    want = (q.shape[0], q.shape[2], q.shape[3], v.shape[3])
    if initial_state is not None and tuple(initial_state.shape) != want:
        raise ValueError(f"initial_state must have shape {want} ([B, H, K, V]), got {tuple(initial_state.shape)}")
