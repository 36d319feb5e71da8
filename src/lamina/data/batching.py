"""Stream batching for truncated backpropagation through time.

The token stream is cut into ``batch_size`` contiguous streams; segment ``i``
holds positions ``[i*T, (i+1)*T)`` of every stream, so segment ``i+1`` goes on
where segment ``i`` stopped and a model can carry its state between them.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from lamina.errors import LaminaError


class StreamBatcher:
    """Inputs and targets ``[batch_size, seq_len]`` for consecutive segments of ``batch_size`` streams.

    Stream ``b`` reads ``tokens[b*n : b*n+n]`` with targets one token later,
    where ``n = (len(tokens) - 1) // batch_size``; the last
    ``(len(tokens) - 1) % batch_size`` tokens are not used. With
    ``drop_last=False`` (evaluation) a final shorter segment is included, so
    every stream position is a target exactly once.
    """

    def __init__(
        self,
        tokens: torch.Tensor,
        batch_size: int,
        seq_len: int,
        drop_last: bool = True,
        name: str = "the token stream",
    ):
        if tokens.dim() != 1:
            raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
        if batch_size < 1 or seq_len < 1:
            raise LaminaError(f"batch_size and seq_len must be at least 1 (got {batch_size} and {seq_len}); fix the config")
        need = batch_size * seq_len + 1 if drop_last else batch_size + 1
        if tokens.numel() < need:
            raise LaminaError(
                f"{name} has {tokens.numel():,} tokens, too few for one segment of batch_size {batch_size} "
                f"x seq_len {seq_len} (needs {need:,}); use a smaller batch_size or seq_len, or a bigger corpus"
            )
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.drop_last = drop_last
        self.stream_len = n = (tokens.numel() - 1) // batch_size
        self.inputs = tokens[: batch_size * n].view(batch_size, n)
        self.targets = tokens[1 : batch_size * n + 1].view(batch_size, n)
        self.n_segments = n // seq_len if drop_last else -(-n // seq_len)

    def __len__(self) -> int:
        return self.n_segments

    def segment(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of segment ``i`` (``0 <= i < n_segments``), each ``[batch_size, <= seq_len]``."""
        if not 0 <= i < self.n_segments:
            raise IndexError(f"segment {i} out of range 0..{self.n_segments - 1}")
        cols = slice(i * self.seq_len, (i + 1) * self.seq_len)
        return self.inputs[:, cols].contiguous(), self.targets[:, cols].contiguous()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return (self.segment(i) for i in range(self.n_segments))


class RandomWindows:
    """``batch_size`` windows of ``seq_len`` tokens at random offsets (nanoGPT's sampling).

    For models trained without carried state: every step sees new segment
    boundaries, so a small corpus is not memorised segment by segment. The
    offsets of step ``i`` come from a generator seeded with ``(seed, i)``, so a
    resumed run reads the same windows without saving any RNG state.
    """

    def __init__(self, tokens: torch.Tensor, batch_size: int, seq_len: int, seed: int = 0, name: str = "the token stream"):
        if tokens.numel() < seq_len + 2:
            raise LaminaError(
                f"{name} has {tokens.numel():,} tokens, too few for windows of seq_len {seq_len} (needs {seq_len + 2:,}); "
                "lower seq_len, or use a bigger corpus"
            )
        self.tokens, self.batch_size, self.seq_len, self.seed = tokens, batch_size, seq_len, seed

    def segment(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        starts = torch.randint(0, self.tokens.numel() - self.seq_len - 1, (self.batch_size,), generator=generator)
        index = starts[:, None] + torch.arange(self.seq_len + 1)
        window = self.tokens[index]
        return window[:, :-1], window[:, 1:]
