"""What the analysis tools measure the same way: wall time of work on a device, a timed training step, and the
peak memory of the process."""

from __future__ import annotations

import resource
import sys
import time

import torch

from lamina.train.step import Stepper


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so the clock measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    """Seconds ``fn()`` takes, its work on ``device`` included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def train_step_seconds(model, cfg, ids: torch.Tensor, device: torch.device, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` training steps of ``model`` as ``lamina train`` takes them
    (:class:`lamina.train.step.Stepper` with ``cfg``, a TrainConfig: forward, backward, clipping, AdamW) on the
    batch ``ids`` (``[B, T + 1]`` token ids: inputs and next-token targets), after one untimed warm-up step."""
    stepper = Stepper(model, cfg, device)

    def step():
        loss, _ = stepper.loss(ids[:, :-1], ids[:, 1:])
        stepper.update(loss)

    return [timed(step, device) for _ in range(repeats + 1)][1:]


def peak_memory(device: torch.device) -> tuple[int, str]:
    """Bytes at the peak, and what was measured."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "CUDA max_memory_allocated"
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, "process peak RSS"
