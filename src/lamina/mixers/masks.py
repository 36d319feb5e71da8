"""Padding and document starts, expressed once for every mixer as masks on its calls.

:func:`run_masked` cuts a call where any row switches between real tokens and
padding or starts a document, and runs each span with the state carried: a
padded position never changes its row's state, and a document starts from
the empty state, whatever the mixer.
"""

from __future__ import annotations

import torch

from lamina.mixers.state import reset_state, select_state


def run_masked(run, x: torch.Tensor, state, valid: torch.Tensor | None, resets: torch.Tensor | None):
    """Apply ``run(x, state) -> (y, state)`` under padding and document-boundary masks.

    The sequence is cut wherever any row switches between real tokens and
    padding or starts a document; inside each span every row is all real or
    all padding. Each span runs with the state carried (the forms' equivalence
    makes that exact); rows that are padding in a span keep their state and
    get zero outputs, and rows starting a document enter it with an empty
    state. The cost is one call per span, whatever the mixer.
    """
    B, T = x.shape[:2]
    for name, mask in (("valid", valid), ("resets", resets)):
        if mask is not None and tuple(mask.shape) != (B, T):
            raise ValueError(f"{name} must be a [B, T] = [{B}, {T}] bool mask, got {tuple(mask.shape)}")
    valid = torch.ones(B, T, dtype=torch.bool, device=x.device) if valid is None else valid.to(x.device, torch.bool)
    resets = torch.zeros(B, T, dtype=torch.bool, device=x.device) if resets is None else resets.to(x.device, torch.bool)
    outputs = []
    for a, b in mask_spans(valid, resets):
        if resets[:, a].any():
            state = reset_state(state, ~resets[:, a])
        y, new = run(x[:, a:b], state)
        live = valid[:, a]
        state = select_state(live, new, state)
        outputs.append(y * live.view(B, 1, 1).to(y.dtype))
    return torch.cat(outputs, dim=1), state


def mask_spans(valid: torch.Tensor, resets: torch.Tensor) -> list[tuple[int, int]]:
    """The ``[a, b)`` spans :func:`run_masked` cuts ``[B, T]`` masks into.

    A span starts at 0, at every document start of any row and wherever any
    row switches between real tokens and padding.
    """
    cut = resets.any(0)
    cut[0] = True
    cut[1:] |= (valid[:, 1:] != valid[:, :-1]).any(0)
    starts = cut.nonzero().flatten().tolist() + [valid.shape[1]]
    return list(zip(starts[:-1], starts[1:]))
