"""The Hierarchical Memory Transformer's model-level memory.

He, Cao, Qin, Prakriya, Sun & Cong 2024, "HMT: Hierarchical Memory Transformer
for Efficient Long Context Language Processing", section 3. The backbone is
the LM's own blocks, embedding, final norm and head; HMT wraps it in
segment-level recurrence with three levels of memory. For segment ``n`` of
``L`` tokens:

- sensory memory: the embeddings of the last ``k`` tokens of segment ``n-1``
  are read before the segment;
- short-term memory: one memory embedding ``P_n`` is read before the segment
  and again after it, so segment ``n`` runs as ``[P_n ; sensory ; H_n ; P_n]``;
  the final hidden state at the last position (after the final RMSNorm, the
  vector the output head reads, as for memory tokens) is segment ``n``'s
  memory embedding ``M_n``;
- long-term memory: the last ``N`` memory embeddings are cached (first in,
  first out) and ``P_n`` is recalled from the cache ``M`` by cross-attention,
  ``P_n = softmax((S W_q)(M W_k)^T / sqrt(d)) M``, queried by a summary
  embedding ``S``: the final hidden state at the last position of
  ``[T ; j token embeddings ; T]`` read from the empty layer state, ``T`` a
  learned summary prompt.

The first segment reads a learned initial embedding as ``P_1`` and no sensory
memory, as in the authors' code, so the all-zeros state is the empty one.

Departure from the paper, to stay causal: the paper summarises the first
``j = L/2`` tokens of segment ``n`` itself and reads the recalled ``P_n``
before those tokens, so a token would see a summary of its own future, which
a causal LM must not and generation cannot compute. Here ``S`` summarises the
last ``j`` tokens of segment ``n-1``: the ``j`` tokens just before segment
``n``, the causal window nearest the paper's (which starts where ours ends).
It is computed when segment ``n-1`` completes, after ``M_{n-1}`` has entered
the cache, so ``P_n`` is recalled from ``M_{n-N}, ..., M_{n-1}`` as in the
paper, and kept in the state until segment ``n`` has read it at both ends.

The layers' states are carried across segments, read and write positions
included, exactly as with memory tokens (:mod:`lamina.models.memory_tokens`):
recurrent layers and attention with ``mem_len > 0`` also see earlier segments
directly; with vanilla attention (``mem_len`` 0, the paper's backbone) only
the memory links segments. The summary pass starts from the empty layer state
and leaves the carried states alone.

The state (:class:`HMTState`) is ``(cache [B, N, d], cache validity [B, N], P [B, 1, d], recent
ids [B, max(k, j)], filled [B], started [B])``: the cache and the recalled
``P`` of the current segment in fp32, the token ids of the last ``max(k, j)``
tokens read (the sensory and summary windows; ids are embedded when read, as
the authors' code keeps its sensory tokens, which stores ``k + j`` integers
instead of ``(k + j) · d`` floats), and the segment bookkeeping of
:mod:`lamina.models.segments`. A row whose first segment has not completed
reads no sensory memory; in a batch where other rows do, its sensory
positions are padding (``valid`` masks) and leave its layer states alone.

Gradients flow through as many segments as the carried state keeps its graph
(``train.bptt_segments``). ``P_n`` is made when segment ``n-1`` completes, so
``W_q``, ``W_k`` and ``T`` are trained only by segments whose predecessor
completed in the same graph: with one segment per call (``segment`` equal to
``train.seq_len``) use ``train.bptt_segments >= 2``.

Parameters: ``T`` and the initial memory embedding (``[d]`` each, N(0, 0.02)
like the token embedding) and ``W_q``, ``W_k`` (``[d, d]``, N(0, 0.02) like
every linear layer): ``2 d^2 + 2 d``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lamina.errors import LaminaError
from lamina.models.hmt_options import HMTOptions
from lamina.models.segments import SegmentMemory
from lamina.ops import kv_memory



class HMTState(NamedTuple):
    cache: torch.Tensor  # the last N memory embeddings [B, N, d], fp32
    cache_valid: torch.Tensor  # [B, N] bool, newest last
    recalled: torch.Tensor  # P of the current segment [B, 1, d], fp32
    recent: torch.Tensor  # the last max(k, j) token ids [B, max(k, j)]
    filled: torch.Tensor  # [B] long: tokens of the current segment read
    started: torch.Tensor  # [B] bool: a segment has completed


class HierarchicalMemory(SegmentMemory):
    """Sensory, short-term and long-term memory around each segment (equations in the module docstring)."""

    name = "HMT"
    off = "model.hmt=null"

    def __init__(self, config: HMTOptions, d_model: int):
        L = config.segment
        if L is None:  # HMTOptions.complete sets it from train.seq_len in a whole Config
            raise LaminaError("model.hmt.segment must be a positive integer when the model is built alone, got null")
        self.sensory = config.sensory
        self.summary_len = config.summary_len or max(1, L // 2)
        super().__init__(L)
        self.cache = config.cache
        self.d_model = d_model
        self.prompt = nn.Parameter(torch.empty(d_model))
        self.initial = nn.Parameter(torch.empty(d_model))
        self.query = nn.Linear(d_model, d_model, bias=False)
        self.key = nn.Linear(d_model, d_model, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in (self.prompt, self.initial, self.query.weight, self.key.weight):
            nn.init.normal_(p, mean=0.0, std=0.02)

    @property
    def recent(self) -> int:
        """Token ids kept: the sensory and the summary windows."""
        return max(self.sensory, self.summary_len)

    def init_state(self, batch: int, device=None) -> HMTState:
        floats = dict(device=device, dtype=torch.float32)
        return HMTState(
            torch.zeros(batch, self.cache, self.d_model, **floats),
            torch.zeros(batch, self.cache, device=device, dtype=torch.bool),
            torch.zeros(batch, 1, self.d_model, **floats),
            torch.zeros(batch, self.recent, device=device, dtype=torch.long),
            torch.zeros(batch, device=device, dtype=torch.long),
            torch.zeros(batch, device=device, dtype=torch.bool),
        )

    def state_size(self) -> int:
        """``(N + 1) · d`` floats: the cache and the recalled embedding (plus ``max(k, j)`` token ids)."""
        return (self.cache + 1) * self.d_model

    @property
    def extra_positions(self) -> int:
        return self.sensory + 2

    def current(self, state: HMTState) -> torch.Tensor:
        """``P`` of the current segment, ``[B, 1, d]``: recalled, or the learned initial one."""
        recalled = state.recalled
        return torch.where(state.started[:, None, None], recalled, self.initial.to(recalled.dtype))

    def read(self, state: HMTState, model) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``[P ; sensory]``; rows with no previous segment read ``P`` alone (padding where others have one)."""
        p, started = self.current(state), state.started
        if not self.sensory or not started.any():
            return p, None
        sensory = model.embed_tokens(state.recent[:, -self.sensory :]).to(p.dtype)
        if started.all():
            return torch.cat([p, sensory], dim=1), None
        valid = torch.cat([torch.ones_like(started)[:, None], started[:, None].expand(-1, self.sensory)], dim=1)
        return torch.cat([p, sensory], dim=1), valid

    def write(self, state: HMTState) -> torch.Tensor:
        return self.current(state)

    def advance(self, state: HMTState, ids: torch.Tensor, written: torch.Tensor | None, model) -> HMTState:
        cache, cache_valid, recalled = state.cache, state.cache_valid, state.recalled
        recent = torch.cat([state.recent, ids], dim=1)[:, -self.recent :]
        counters = self.counters(state, ids.shape[1], written is not None)
        if written is not None:  # a segment completed: cache its memory embedding, recall the next segment's P
            joined, joined_valid = kv_memory.extend((cache,), (written[:, -1:].float(),), cache_valid)
            cache, cache_valid = kv_memory.keep_last((cache, cache_valid), (*joined, joined_valid))
            recalled = self.recall(self.summarise(recent[:, -self.summary_len :], model), cache, cache_valid)
        return HMTState(cache, cache_valid, recalled, recent, *counters)

    def summarise(self, ids: torch.Tensor, model) -> torch.Tensor:
        """``S [B, d]``: the final hidden state at the last position of ``[T ; ids ; T]``, from the empty state."""
        x = model.embed_tokens(ids)
        prompt = self.prompt.to(x.dtype).expand(x.shape[0], 1, -1)
        return model.encode(torch.cat([prompt, x, prompt], dim=1))[:, -1]

    def recall(self, summary: torch.Tensor, cache: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``P [B, 1, d]``: one-head cross-attention from the summary over the valid cache entries (fp32)."""
        q, k = self.query(summary)[:, None], self.key(cache.to(summary.dtype))
        return F.scaled_dot_product_attention(q, k, cache.to(k.dtype), attn_mask=valid[:, None]).float()

    def describe(self) -> str:
        return (
            f"HMT: segments of {self.segment_len} tokens read as [recalled; last {self.sensory} tokens; segment; "
            f"recalled]; recalled from a cache of {self.cache} memory embeddings by a {self.summary_len}-token summary"
        )
