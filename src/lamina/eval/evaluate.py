"""Evaluation with state carried across segments (or not), Transformer-XL style.

The split is cut into ``batch_size`` contiguous streams read in ``tgt_len``
segments; every position is scored exactly once. With ``carry`` the state of
segment n is the initial state of segment n+1, so a recurrent model or an
attention model with ``mem_len > 0`` sees past its segment; without it every
segment starts empty.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lamina.data import StreamBatcher


@dataclass
class EvalResult:
    nats: float  # mean loss per token
    tokens: int  # tokens scored


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast on CUDA unless fp32 is asked for; nothing on CPU unless bf16 is asked for."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@torch.no_grad()
def evaluate(
    model,
    tokens: torch.Tensor,
    *,
    batch_size: int,
    tgt_len: int,
    carry: bool = True,
    max_tokens: int = 0,
    device: torch.device | str = "cpu",
    precision: str = "auto",
    name: str = "evaluation split",
) -> EvalResult:
    """Mean loss per token over ``tokens`` (the first ``max_tokens + 1`` of them if set)."""
    device = torch.device(device)
    if max_tokens:
        tokens = tokens[: max_tokens + 1]
    batch_size = max(1, min(batch_size, (len(tokens) - 1) // max(1, tgt_len)))
    batcher = StreamBatcher(tokens, batch_size, tgt_len, drop_last=False, name=name)
    was_training = model.training
    model.eval()
    total, count, state = 0.0, 0, None
    try:
        for i in range(len(batcher)):
            x, y = (t.to(device) for t in batcher.segment(i))
            with autocast_for(device, precision):
                logits, new_state = model(x, state if carry else None)
            total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
            count += y.numel()
            state = new_state
    finally:
        model.train(was_training)
    return EvalResult(total / max(count, 1), count)
