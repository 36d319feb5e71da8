"""Will a training run fit in memory? An estimate made before anything is allocated, and the check on it.

:func:`estimate_training_memory` builds the model on PyTorch's ``meta`` device (shapes, no storage), so
the parameter count is exact for every architecture (LM, HMT, RMT, HAT, MEGABYTE, any mixer) and a model
that cannot be built (heads not dividing ``d_model``) is refused here too. To the parameters it adds:

* weights, gradients and AdamW's two moments: 4 fp32 tensors, 16 bytes per parameter;
* activations kept for the backward pass: ``bptt_segments x batch_size x seq_len`` tokens, times the sum
  over the model's blocks of ``width x ACTIVATION_FLOATS[mixer] x 4`` bytes;
* the output layer's logits: ``16 x batch_size x seq_len x vocab_size`` bytes per segment (logits, their
  fp32 log-softmax kept by the loss, its gradient and one temporary).

The activation constants were measured (how: the comment above :data:`ACTIVATION_FLOATS`). Against one
real AdamW step on CPU the estimate came out at 0.98x (shakespeare-char, 4.8 GB measured) to 1.35x
(ptb-char, 4.7 GB) of the peak for the LMs, up to 1.7x for fox and 2.6x for MEGABYTE (whose global model
sees a quarter of the positions): rough and on the high side, good for refusing a run that cannot fit
(``model.d_model=100000``) before minutes are spent loading data, not for packing memory tightly.
:func:`check_fits` compares it with the memory available on the device: on CPU ``MemAvailable`` (and a
cgroup limit when one is set), on CUDA ``torch.cuda.mem_get_info``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lamina.config import Config
from lamina.errors import LaminaError, format_bytes

BYTES_PER_PARAMETER = 16  # fp32 weight + gradient + AdamW exp_avg + exp_avg_sq
LOGIT_BYTES = 16  # per token and vocabulary entry: logits, log-softmax, its gradient, a temporary (measured 14.2)
BYTE_VOCAB = 257  # lamina.data.ByteTokenizer.vocab_size: the vocabulary known before a corpus is read

# fp32 values kept per token, per channel of the block's width, per block (the mixer with its norms, residual
# and SwiGLU MLP), for the backward pass of one training step on CPU in fp32.
#
# Measured with one AdamW step of an LM of 4 such layers at d_model 256 (the default preset's shape) on
# batches 16 x 128 and 2 x 1024 (and 8 x 128 at d_model 512 for attn, hgrn, hgrn2, mamba2): the larger of
# (a) the bytes of the distinct storages saved for backward (torch.autograd.graph.saved_tensors_hooks)
# and (b) the growth of the peak RSS (resource.getrusage) over that step less 12 bytes per parameter for
# gradients and moments, divided by 4 x tokens x d_model x layers, rounded up. For example hgrn saved
# 133 bytes and grew 151-153 bytes per token-channel-layer (40 floats below), attn 95-112 and 107-122
# (36, as shakespeare-char at 64 x 256 measured 126), mamba2 362-398 and 483-510 (128). Presets built of these (default, attn, xl, hawk, griffin, samba,
# hgrn2-attn, hmt) measured 111-290 bytes. On CUDA with bf16 autocast activations are smaller, so the
# estimate errs high there. Attention-like mixers with explicit T x T scores (fox, xl) grow past their
# value for seq_len well beyond 1024; a mixer missing here counts DEFAULT_ACTIVATION_FLOATS.
ACTIVATION_FLOATS: dict[str, int] = {
    "attn": 36,
    "block_recurrent": 36,
    "deltanet": 60,
    "fox": 68,
    "gated_deltanet": 88,
    "gla": 56,
    "gru": 44,
    "hgrn": 40,
    "hgrn2": 80,
    "infini": 44,
    "linear_attn": 48,
    "lstm": 40,
    "mamba2": 128,
    "mingru": 36,
    "minlstm": 40,
    "retnet": 72,
    "rglru": 44,
    "titans": 124,
    "titans_mac": 136,
    "titans_mag": 136,
    "xl": 64,
}
DEFAULT_ACTIVATION_FLOATS = 128


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a training run needs, by part (see the module's docstring for how each is counted)."""

    parameters: int
    weights: int  # weights, gradients and optimizer moments
    activations: int
    logits: int

    @property
    def total(self) -> int:
        return self.weights + self.activations + self.logits

    def __int__(self) -> int:
        return self.total

    def describe(self) -> str:
        return (f"about {format_bytes(self.total)} to train: {self.parameters:,} parameters take {format_bytes(self.weights)} "
                f"with gradients and AdamW moments, activations {format_bytes(self.activations + self.logits)}")



def config_vocab_size(cfg: Config) -> int:
    """The vocabulary the config alone tells: ``model.vocab_size``, else the byte tokenizer's 257.

    A word vocabulary is known only once its corpus is read, so before that this is a lower bound; pass
    the tokenizer's size to the functions below once there is one.
    """
    return cfg.model.vocab_size or BYTE_VOCAB


def estimate_training_memory(cfg: Config, vocab_size: int | None = None) -> MemoryEstimate:
    """Bytes one training step of ``cfg`` needs (weights, gradients, AdamW moments, activations), estimated
    without allocating: the model is built on the ``meta`` device. ``vocab_size``: the tokenizer's, else
    :func:`config_vocab_size`. Raises :class:`LaminaError` if the model cannot be built from ``cfg``."""
    from lamina.models import build_model
    from lamina.models.lm import Block

    vocab_size = vocab_size or config_vocab_size(cfg)
    with torch.device("meta"):
        model = build_model(cfg.model, vocab_size)
    parameters = sum(p.numel() for p in model.parameters())
    floats_per_token = sum(
        block.mixer.d_model * ACTIVATION_FLOATS.get(getattr(type(block.mixer), "name", ""), DEFAULT_ACTIVATION_FLOATS)
        for block in model.modules() if isinstance(block, Block)
    )
    t = cfg.train
    tokens = t.bptt_segments * t.batch_size * t.seq_len  # the graph of bptt_segments segments is kept for one backward
    return MemoryEstimate(
        parameters=parameters,
        weights=BYTES_PER_PARAMETER * parameters,
        activations=4 * tokens * floats_per_token,
        logits=LOGIT_BYTES * tokens * vocab_size,
    )


def available_memory(device: torch.device | str = "cpu") -> int:
    """Bytes free for a new run on ``device``: CUDA's free memory, else the host's ``MemAvailable`` (no more
    than a cgroup limit leaves), falling back to the total physical memory."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):
            return 1 << 62  # unknown: nothing is refused
    left = _cgroup_left()
    return min(available, left) if left is not None else available


def _cgroup_left() -> int | None:
    """What a cgroup memory limit leaves to this process (v2, then v1), or None without a limit."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or int(limit) >= 1 << 60:
            return None
        return max(0, int(limit) - usage)
    return None


def check_fits(cfg: Config, vocab_size: int | None = None, device: torch.device | str = "cpu") -> MemoryEstimate:
    """Refuse ``cfg`` with a :class:`LaminaError` if training it cannot fit in ``device``'s memory.

    Call it before the corpus is read and before the model is built (``vocab_size``: the tokenizer's when
    known, else the config's; see :func:`config_vocab_size`). Returns the estimate when it fits.
    """
    estimate = estimate_training_memory(cfg, vocab_size)
    if device == "auto":  # train.device's default
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    free = available_memory(device)
    if estimate.total <= free:
        return estimate
    t = cfg.train
    weights = (f"{estimate.parameters:,} parameters at model.d_model={cfg.model.d_model}: {format_bytes(estimate.weights)} "
               f"of weights, gradients and AdamW moments at {BYTES_PER_PARAMETER} bytes each")
    segments = f"{t.bptt_segments} segments of " if t.bptt_segments > 1 else ""
    acts = f"{format_bytes(estimate.activations + estimate.logits)} of activations for {segments}{t.batch_size} x {t.seq_len} tokens"
    lower_model = "lower model.d_model, model.mlp_hidden or the number of model.layers"
    lower_batch = "lower train.batch_size or train.seq_len" + (" or train.bptt_segments" if t.bptt_segments > 1 else "")
    advice = (f"{lower_model} (or {lower_batch})" if estimate.weights >= estimate.activations + estimate.logits
              else f"{lower_batch} (or {lower_model})")
    where = f"free on {device}" if device.type == "cuda" else "available in memory"
    raise LaminaError(
        f"this run needs about {format_bytes(estimate.total)} to train ({weights}; {acts}) but only {format_bytes(free)} "
        f"is {where}; {advice}"
    )
