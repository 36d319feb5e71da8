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
