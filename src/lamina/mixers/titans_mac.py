"""Titans' memory as context (``titans_mac``): attention over what the long-term memory retrieves.

Behrouz, Zhong & Mirrokni 2025, "Titans: Learning to Memorize at Test Time",
section 4.1. The stream is cut into segments of ``C = segment`` tokens,
counted from its start. For a segment ``S(t)``, per head::

    h_t = M*_{t-1}(q_t),  q_t = S(t) W_Q        retrieval from the memory as it was before the segment
    y_t = Attn([persistent ; h_t ; S(t)])       one output per token of S(t)
    M_t = M_{t-1} updated on y_t                the memory's keys, values and gates taken from y_t
    o_t = y_t ⊗ M*_t(y_t)                       ⊗: the normalised, non-linear gate of section 4.2

with the linear memory, the gates and the stability scaling of
:mod:`lamina.mixers.parts.neural_memory`, and the persistent
slots, rotary positions and the gate of ``titans_mag``
(:mod:`lamina.mixers.parts.titans_attention`): ``o = W_out(RMSNorm(y_attn) * sigmoid(RMSNorm(M*(y))))``
per head, ``y_attn`` the attention's per-head output. The memory's input is
``y = RMSNorm(y_attn W_y)`` of width ``d_model``.

Departures from the paper, the first two to keep a causal language model
causal and exact:

- Causal context. The paper's equations attend over all of ``h_t``, but
  ``h_j`` is read with ``x_j``'s query, so here token ``i`` of a segment sees
  ``h_j`` and ``x_j`` only for ``j <= i``; the persistent slots are always
  visible.
- Per-token reads. ``M*_t(y_t)`` for token ``i`` uses the memory updated on
  ``y_1 .. y_i`` of the segment, the op's per-token memory, not the memory
  after the whole segment, which would show token ``i`` the later ones.
- Retrieved tokens. ``h_j`` lives in the memory's value space (per head),
  not the residual stream: it has its own key/value projection and takes
  ``x_j``'s rotary position. ``y`` is RMS-normalised, like a block's input,
  so the memory sees inputs at the scale it sees in ``titans`` and
  ``titans_mag`` (unnormalised, ``y_attn W_y`` has an RMS near 0.01 at
  initialisation, a block's input near 1).

The update chunk is the segment. The neural-memory op takes every gradient
of a chunk at the memory entering it (the paper's ``b``, section 3.2; the
paper does not tie it to ``C``). Here ``b = C``: every token of a segment is
learned at the memory it was retrieved from, the op's chunk anchor is the
retrieval memory (nothing more to carry), and ``theta_max`` defaults to
``1 / (2 C)``.

State: the memory branch's ``(M, S, anchor, position in the segment)`` and
the attention keys and values of ``h`` and ``x`` for the last ``C - 1``
tokens (those before the segment's start are masked), so a full call,
carried chunks of any sizes and token-by-token decoding compute the same
function. A call runs segment by segment (the retrieval needs the memory
written by the previous segment); sequences at different positions in their
segments (after padding or a document start) cut it wherever any of them
starts a segment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
from torch import nn

from lamina.mixers.parts.neural_memory import NeuralMemoryState, TitansOptions
from lamina.mixers.parts.titans_attention import TitansAttention
from lamina.mixers.registry import register
from lamina.ops import kv_memory


class TitansMACState(NamedTuple):
    memory: NeuralMemoryState
    h_keys: torch.Tensor  # keys of the retrieved h for the segment's last C - 1 tokens [B, C - 1, H, K]
    h_values: torch.Tensor
    x_keys: torch.Tensor  # keys of the tokens themselves [B, C - 1, H, K]
    x_values: torch.Tensor


@dataclass
class TitansMACOptions:
    heads: int = 4
    head_dim: Optional[int] = None  # key and value width per head (None: d_model // heads)
    segment: int = 64  # C: tokens per segment, also the memory's update chunk
    theta_max: Optional[float] = None  # the largest learning rate of the inner loop (None: 1 / (2 segment))
    persistent: int = 4  # learned key/value slots every query sees (the paper's persistent memory)
    rope_base: float = 10000.0


@register("titans_mac")
class TitansMAC(TitansAttention):
    """Titans' memory as context for attention inside segments (MAC, section 4.1)."""

    Options = TitansMACOptions
    forms = ("recurrent", "chunk")

    def __init__(self, d_model: int, options: TitansMACOptions, layer_idx: int = 0, n_layers: int = 1):
        memory = TitansOptions(heads=options.heads, head_dim=options.head_dim, chunk_size=options.segment,
                               theta_max=options.theta_max)
        super().__init__(d_model, options, layer_idx, n_layers, memory)
        H, K = self.memory.heads, self.memory.head_dim
        self.memory_kv = nn.Linear(H * K, 2 * H * K, bias=False)  # keys and values of the retrieved h
        self.attn_out = nn.Linear(H * K, d_model, bias=False)  # y, the memory's input
        self.y_norm = nn.RMSNorm(d_model, eps=1e-5)

    def init_state(self, batch: int, device=None, dtype=None) -> TitansMACState:
        """The memory branch's state, then keys and values of ``h`` and of ``x``, each ``[B, C - 1, H, K]``."""
        dtype = torch.promote_types(dtype or torch.float32, torch.float32)
        shape = (batch, self.options.segment - 1, self.memory.heads, self.memory.head_dim)
        kv = (torch.zeros(shape, device=device, dtype=dtype) for _ in range(4))
        return TitansMACState(self.memory.init_state(batch, device, dtype), *kv)

    def state_size(self) -> int:
        """``3 H K^2 + 1`` for the memory, ``4 (C - 1) H K`` for the segment's keys and values of ``h`` and ``x``."""
        H, K = self.memory.heads, self.memory.head_dim
        return self.memory.state_size() + 4 * (self.options.segment - 1) * H * K

    def _segment(self, x: torch.Tensor, state: TitansMACState) -> tuple[torch.Tensor, TitansMACState]:
        """Tokens that all lie in the current segment of every sequence: outputs and the new state."""
        B, T, _ = x.shape
        H, K = self.memory.heads, self.memory.head_dim
        memory, buffered = state.memory, (state.h_keys, state.h_values, state.x_keys, state.x_values)
        seen = memory.position[:, 0].round().long()  # tokens of its current segment each sequence has seen
        h = self.memory.read(x, memory.anchor)  # the memory as it was at the segment's start
        hk, hv = self.memory_kv(h.to(x.dtype).flatten(-2)).view(B, T, 2, H, K).unbind(2)
        q, xk, xv = self.qkv(x).view(B, T, 3, H, K).unbind(2)
        P = buffered[0].shape[1]
        valid = torch.arange(P, device=x.device)[None, :] >= P - seen[:, None]  # buffered tokens of this segment
        joined, valid = kv_memory.extend(buffered, (hk, hv, xk, xv), valid)
        mask = kv_memory.causal_mask(valid, T, None)
        positions = torch.arange(P + T, device=x.device)  # h_j at x_j's position
        y_attn = self._attention(q, torch.cat([joined[0], joined[2]], 1), torch.cat([joined[1], joined[3]], 1),
                                 positions[P:], positions.repeat(2), mask.repeat(1, 1, 1, 2))
        y = self.attn_out(y_attn.flatten(-2))
        y_mem, memory = self.memory(self.y_norm(y.to(self.y_norm.weight.dtype)), memory)
        return self._combine(y_attn, y_mem), TitansMACState(memory, *kv_memory.keep_last(buffered, joined))

    def forward_chunk(self, x: torch.Tensor, state: TitansMACState) -> tuple[torch.Tensor, TitansMACState]:
        C, T = self.options.segment, x.shape[1]
        seen = set(state.memory.position[:, 0].round().long().tolist())
        cuts = sorted({0, T} | {t for p in seen for t in range(C - p, T, C)})
        outputs = []
        for a, b in zip(cuts[:-1], cuts[1:]):
            y, state = self._segment(x[:, a:b], state)
            outputs.append(y)
        return torch.cat(outputs, 1), state

    def step(self, x_t: torch.Tensor, state: TitansMACState) -> tuple[torch.Tensor, TitansMACState]:
        y, state = self._segment(x_t[:, None], state)
        return y[:, 0], state
