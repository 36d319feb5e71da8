"""Evaluation with state carried across segments (or not), Transformer-XL style.

The split is cut into ``batch_size`` contiguous streams read in ``tgt_len``
segments; every position is scored exactly once. With ``carry`` the state of
segment n is the initial state of segment n+1, so a recurrent model or an
attention model with ``mem_len > 0`` sees past its segment; without it every
segment starts empty.

Only one segment's logits ``[batch_size, tgt_len, V]`` exist at a time, and
only sums are kept across segments, so memory is bounded however long the
stream (beyond the token ids themselves).

:func:`loss_by_position` splits the same loss by the position of the target
token within its document (documents end with the tokenizer's ``eos_id``) or
within its evaluation stream, into buckets of position ranges.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lamina.data import StreamBatcher
from lamina.errors import LaminaError
from lamina.progress import Progress
from lamina.runtime import autocast_for

POSITIONS = ("document", "stream")


class EvalStopped(Exception):
    """Raised between segments when the evaluation's ``stop`` callable asks it to stop (Ctrl-C, SIGTERM)."""


@dataclass
class EvalResult:
    nats: float  # mean loss per token
    tokens: int  # tokens scored


@dataclass
class BucketResult:
    """Loss summed per position bucket: bucket ``i`` holds positions ``[edges[i-1], edges[i])``.

    ``edges`` are the bucket upper bounds given; there is one more bucket than
    edges, for positions ``>= edges[-1]`` (and the first starts at 0).
    """

    edges: list[int]
    sums: list[float]  # nats summed over the targets of each bucket
    counts: list[int]  # targets in each bucket

    def ranges(self) -> list[tuple[int, int | None]]:
        """``(low, high)`` of each bucket; ``high`` is None for the last, open one."""
        lows = [0, *self.edges]
        return list(zip(lows, [*self.edges, None]))

    def nats(self) -> list[float | None]:
        """Mean loss per target in each bucket (None for an empty bucket)."""
        return [s / c if c else None for s, c in zip(self.sums, self.counts)]

    @property
    def total(self) -> EvalResult:
        count = sum(self.counts)
        return EvalResult(sum(self.sums) / max(count, 1), count)


def _segment_losses(
    model,
    tokens: torch.Tensor,
    *,
    batch_size: int,
    tgt_len: int,
    carry: bool,
    max_tokens: int,
    device: torch.device,
    precision: str,
    name: str,
    stop: Callable[[], bool] | None = None,
) -> Iterator[tuple[StreamBatcher, int, torch.Tensor, torch.Tensor]]:
    """``(batcher, i, inputs, losses)`` per segment ``i``: inputs and per-target nats, ``[B, <= tgt_len]``, on CPU.

    Progress is shown (see :class:`lamina.progress.Progress`); ``stop()`` is asked before every segment and
    :class:`EvalStopped` raised when it says so."""
    if batch_size < 1 or tgt_len < 1 or max_tokens < 0:
        raise LaminaError(f"evaluation needs batch_size >= 1, tgt_len >= 1 and max_tokens >= 0 (0: all), "
                          f"got {batch_size}, {tgt_len} and {max_tokens}")
    if max_tokens:
        tokens = tokens[: max_tokens + 1]
    batch_size = max(1, min(batch_size, (len(tokens) - 1) // tgt_len))
    batcher = StreamBatcher(tokens, batch_size, tgt_len, drop_last=False, name=name)
    was_training = model.training
    model.eval()
    state = None
    progress = Progress(len(batcher), f"scoring the {name}", unit="segment", tokens_per_unit=batch_size * tgt_len,
                        leave=False)
    try:
        for i in range(len(batcher)):
            if stop is not None and stop():
                raise EvalStopped(f"stopped after {i} of {len(batcher)} segments of the {name}")
            x, y = batcher.segment(i)
            with torch.no_grad(), autocast_for(device, precision):
                logits, new_state = model(x.to(device), state if carry else None)
                losses = F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten(), reduction="none")
            yield batcher, i, x, losses.view(y.shape).cpu()
            state = new_state
            progress.update()
    finally:
        progress.close()
        model.train(was_training)


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
    stop: Callable[[], bool] | None = None,
) -> EvalResult:
    """Mean loss per token over ``tokens`` (the first ``max_tokens + 1`` of them if set); ``stop`` as in
    :func:`_segment_losses`."""
    total, count = 0.0, 0
    for _, _, _, losses in _segment_losses(
        model, tokens, batch_size=batch_size, tgt_len=tgt_len, carry=carry, max_tokens=max_tokens,
        device=torch.device(device), precision=precision, name=name, stop=stop,
    ):
        total += losses.double().sum().item()
        count += losses.numel()
    return EvalResult(total / max(count, 1), count)


def document_positions(inputs: torch.Tensor, eos_id: int, previous: torch.Tensor) -> torch.Tensor:
    """Position within its document of each target, given the inputs ``[B, T]`` that predict them.

    A document's first token is position 0 and the ``eos_id`` that ends it
    belongs to it, so a target is at 0 when its input is ``eos_id`` and one
    past the previous target otherwise. ``previous [B]`` is the position of
    the token at ``inputs[:, 0]`` (the target before the segment).
    """
    t = torch.arange(inputs.shape[1])
    last_eos = torch.where(inputs == eos_id, t, -1).cummax(dim=1).values
    return torch.where(last_eos >= 0, t - last_eos, previous[:, None] + 1 + t)


def _start_positions(tokens: torch.Tensor, starts: Sequence[int], eos_id: int) -> torch.Tensor:
    """Document position of ``tokens[s]`` for each stream start ``s``."""
    out = []
    for s in starts:
        eos = (tokens[:s] == eos_id).nonzero()
        out.append(s - int(eos[-1]) - 1 if len(eos) else s)
    return torch.tensor(out, dtype=torch.long)


def check_edges(edges: Sequence[int]) -> list[int]:
    edges = [int(e) for e in edges]
    if not edges or edges[0] <= 0 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise LaminaError(f"bucket edges must be increasing positive integers (e.g. 128,512,2048), got {edges}")
    return edges


@torch.no_grad()
def loss_by_position(
    model,
    tokens: torch.Tensor,
    edges: Sequence[int],
    *,
    eos_id: int,
    positions: str = "document",
    batch_size: int,
    tgt_len: int,
    carry: bool = True,
    max_tokens: int = 0,
    device: torch.device | str = "cpu",
    precision: str = "auto",
    name: str = "evaluation split",
) -> BucketResult:
    """Loss summed per bucket of target positions, each target scored once (as in :func:`evaluate`).

    ``positions="document"``: a target's position counted from the start of
    its document, documents being separated by ``eos_id`` in ``tokens`` (for a
    word tokenizer ``eos_id`` ends every line, so documents are lines).
    ``positions="stream"``: its index in its evaluation stream (the
    ``batch_size`` contiguous streams; a stream's first target is position 1),
    i.e. how many tokens a model carrying its state has read before it.
    Buckets are ``[0, edges[0])``, ``[edges[0], edges[1])``, ..., ``[edges[-1], inf)``.
    """
    if positions not in POSITIONS:
        raise LaminaError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
    edges = check_edges(edges)
    bounds = torch.tensor(edges, dtype=torch.long)
    sums = torch.zeros(len(edges) + 1, dtype=torch.float64)
    counts = torch.zeros(len(edges) + 1, dtype=torch.long)
    previous = None
    for batcher, i, x, losses in _segment_losses(
        model, tokens, batch_size=batch_size, tgt_len=tgt_len, carry=carry, max_tokens=max_tokens,
        device=torch.device(device), precision=precision, name=name,
    ):
        if positions == "stream":
            pos = (i * batcher.seq_len + 1 + torch.arange(x.shape[1])).expand_as(x)
        else:
            if previous is None:
                starts = [b * batcher.stream_len for b in range(batcher.batch_size)]
                previous = _start_positions(tokens, starts, eos_id)
            pos = document_positions(x, eos_id, previous)
            previous = pos[:, -1]
        bucket = torch.bucketize(pos.flatten(), bounds, right=True)
        sums.index_add_(0, bucket, losses.flatten().double())
        counts += torch.bincount(bucket, minlength=len(edges) + 1)
    return BucketResult(edges, sums.tolist(), counts.tolist())
