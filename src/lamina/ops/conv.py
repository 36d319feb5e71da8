"""Short causal depthwise convolution with a carried state (Mamba, RG-LRU, DeltaNet).

``y_t[c] = bias[c] + sum_{j=0..W-1} weight[c, j] * x_{t-W+1+j}[c]``: each channel
sees its own last ``W`` inputs. The state is the last ``W - 1`` inputs
``[B, W-1, C]`` (zeros at the start of a stream), so a segment goes on exactly
where the previous one stopped and a single token is a shift of the buffer.
Layout ``[B, T, C]``; ``weight`` is ``[C, W]``.

Forms, same signature and results:

- :func:`causal_conv_reference`: a plain loop over time (the float64 reference);
- :func:`causal_conv`: one ``F.conv1d`` over ``[state, x]`` (what mixers call);
- :func:`causal_conv_step`: one token (decoding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(x: torch.Tensor, weight: torch.Tensor, initial_state: torch.Tensor | None) -> None:
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[-1]:
        raise ValueError(
            f"causal conv needs x [B, T, C] and weight [C, W], got {tuple(x.shape)} and {tuple(weight.shape)}"
        )
    want = (x.shape[0], weight.shape[1] - 1, x.shape[2])
    if initial_state is not None and tuple(initial_state.shape) != want:
        raise ValueError(f"initial_state must have shape {want}, got {tuple(initial_state.shape)}")


def _padded(x: torch.Tensor, width: int, initial_state: torch.Tensor | None) -> torch.Tensor:
    """``[state, x]``: the ``W - 1`` inputs before the segment, then the segment."""
    if initial_state is None:
        return F.pad(x, (0, 0, width - 1, 0))
    return torch.cat([initial_state.to(x.dtype), x], dim=1)


def causal_conv_reference(x, weight, bias=None, *, initial_state=None, output_final_state=False):
    """Plain loop over time: ``(y [B, T, C], final state [B, W-1, C] or None)``."""
    _check(x, weight, initial_state)
    width = weight.shape[1]
    xp = _padded(x, width, initial_state)
    outputs = []
    for t in range(x.shape[1]):
        y = (xp[:, t : t + width] * weight.T.to(x.dtype)).sum(1)
        outputs.append(y if bias is None else y + bias.to(x.dtype))
    y = torch.stack(outputs, 1) if outputs else x.new_zeros(x.shape)
    return y, (xp[:, xp.shape[1] - (width - 1) :] if output_final_state else None)


def causal_conv(x, weight, bias=None, *, initial_state=None, output_final_state=False):
    """One depthwise ``conv1d`` over ``[state, x]``: ``(y, final state or None)``."""
    _check(x, weight, initial_state)
    width = weight.shape[1]
    xp = _padded(x, width, initial_state)
    y = F.conv1d(xp.transpose(1, 2), weight.to(x.dtype).unsqueeze(1), None if bias is None else bias.to(x.dtype),
                 groups=x.shape[-1])
    return y.transpose(1, 2), (xp[:, xp.shape[1] - (width - 1) :] if output_final_state else None)


def causal_conv_step(x_t, weight, bias, state):
    """One token ``x_t [B, C]``: ``(y_t [B, C], new state [B, W-1, C])``."""
    window = torch.cat([state.to(x_t.dtype), x_t[:, None]], dim=1)  # [B, W, C]
    y = (window * weight.T.to(x_t.dtype)).sum(1)
    return (y if bias is None else y + bias.to(x_t.dtype)), window[:, 1:]
