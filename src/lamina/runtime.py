"""The runtime floor under everything that trains or evaluates: the device, autocast, the optimizer and the
learning-rate schedule.

Training (:mod:`lamina.train`), evaluation (:mod:`lamina.eval`) and the analysis tools (:mod:`lamina.tools`) all
choose these the same way, so they live here, below all of them.
"""

from __future__ import annotations

import contextlib
import math

import torch

from lamina.errors import LaminaError


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA when there is one), ``cpu``, ``cuda`` or ``cuda:N``; anything else is a LaminaError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise LaminaError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LaminaError(f"the device is {name} but CUDA is not available here; use cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise LaminaError(f"the device is {name} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast on CUDA unless fp32 is asked for; nothing on CPU unless bf16 is asked for."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def make_optimizer(model: torch.nn.Module, cfg, device: torch.device) -> torch.optim.AdamW:
    """AdamW with ``cfg``'s (a TrainConfig) lr, betas and weight decay; the decay applies to matrices and
    embeddings only (not to norms, biases or gate vectors). The fused kernel on every device: on CPU it takes
    about a third of the time of the multi-tensor one (7.97 against 2.93 ms a step for the default 3.3M-parameter
    model, one thread)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type in ("cpu", "cuda")
    )


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to ``min_ratio`` at ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, cfg, total: int | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """``cfg``'s (a TrainConfig) warmup and cosine decay over ``total`` steps (default ``cfg.steps``): step ``s``
    runs at ``cfg.lr * lr_factor(s, ...)``."""
    total = cfg.steps if total is None else total
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.warmup_steps, total, cfg.min_lr_ratio)
    )
