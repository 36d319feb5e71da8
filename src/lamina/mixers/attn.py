"""Causal softmax attention with a key/value memory as its state.

Multi-head attention with rotary positions through
``torch.nn.functional.scaled_dot_product_attention`` (flash kernels on GPU).
The state is the last ``mem_len`` tokens' keys and values (with a validity
mask), so consecutive segments see each other as in Transformer-XL's segment
recurrence (Dai et al. 2019, section 3.2; here with rotary instead of its
relative sinusoids). ``mem_len=0`` is a vanilla transformer; ``window`` limits
every query to the last ``window`` keys (local attention), and with
``mem_len >= window - 1`` chunked and token-by-token runs equal the full one.

Keys are stored before rotation and rotated by their position inside the
``[memory + segment]`` window at every call: scores depend on distances only,
so positions never grow with the stream.

``sinks`` (with a window) keeps the first ``sinks`` keys/values of the stream
for good besides the window: StreamingLLM's attention sinks (Xiao et al. 2024,
section 3.2), which keep a windowed model stable on unbounded streams. As
there (section 3.2, "positions within the cache"), a query's position is the
number of keys it sees before it (sinks first, then its window), each sink
sits at its slot index, and window keys keep their distances to the query. A
sink's distance to a query thus depends on how many keys that query sees, which a single
rotation of the keys cannot express: the sink scores use a second copy of the
query rotated to its cache position, against the sink keys in a second half of
the head dimension (zeros elsewhere), so one ``scaled_dot_product_attention``
call still covers all keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lamina.errors import LaminaError
from lamina.mixers import kv_memory
from lamina.mixers.base import Mixer, State, register
from lamina.ops.rotary import rotary


@dataclass
class AttnOptions:
    heads: int = 4
    mem_len: int = 0  # keys/values carried across segments (0: none)
    window: Optional[int] = None  # sliding-window size including the query itself (None: unlimited)
    rope_base: float = 10000.0
    sinks: int = 0  # first tokens of the stream kept for good besides the window (needs window)


@register("attn")
class Attention(Mixer):
    Options = AttnOptions
    forms = ("recurrent", "parallel")
    memory_valid = 2  # where the state holds its memory's validity (kv_memory.keep_newest)

    def __init__(self, d_model: int, options: AttnOptions, layer_idx: int = 0, n_layers: int = 1):
        super().__init__(d_model, options, layer_idx, n_layers)
        if d_model % options.heads or (d_model // options.heads) % 2:
            raise LaminaError(
                f"attn: d_model {d_model} must split into {options.heads} heads of an even size; "
                "change model.d_model or the heads option"
            )
        if options.sinks and options.window is None:
            raise LaminaError(
                f"attn: sinks = {options.sinks} must be 0, or a positive count together with a window; "
                "set window or sinks: 0"
            )
        self.heads = options.heads
        self.head_dim = d_model // options.heads
        self.mem_len = options.mem_len
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def init_state(self, batch: int, device=None, dtype=None) -> State:
        """Keys, values ``[B, M, H, D]`` and validity ``[B, M]``; with sinks, the same for ``[B, sinks]`` slots."""
        shape = (batch, self.mem_len, self.heads, self.head_dim)
        zeros = torch.zeros(shape, device=device, dtype=dtype or torch.float32)
        state = (zeros, zeros.clone(), torch.zeros(batch, self.mem_len, device=device, dtype=torch.bool))
        S = self.options.sinks
        if S:
            sink = torch.zeros(batch, S, self.heads, self.head_dim, device=device, dtype=dtype or torch.float32)
            state += (sink, sink.clone(), torch.zeros(batch, S, device=device, dtype=torch.bool))
        return state

    def state_size(self) -> int:
        return 2 * (self.mem_len + self.options.sinks) * self.d_model

    def forward_parallel(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.head_dim).unbind(2)
        k_mem, v_mem, valid_mem = state[:3]
        if k_mem.shape[1] != self.mem_len:
            raise ValueError(f"attn state holds {k_mem.shape[1]} tokens but mem_len is {self.mem_len}")
        if self.options.sinks:
            return self._with_sinks(q, k, v, state)
        M = self.mem_len
        (k_all, v_all), valid = kv_memory.extend((k_mem, v_mem), (k, v), valid_mem)

        positions = torch.arange(M + T, device=x.device)
        base = self.options.rope_base
        qr = rotary(q, positions[M:], base).transpose(1, 2)
        kr = rotary(k_all, positions, base).transpose(1, 2)
        vt = v_all.transpose(1, 2)
        if M == 0 and self.options.window is None:
            y = F.scaled_dot_product_attention(qr, kr, vt, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(qr, kr, vt, attn_mask=kv_memory.causal_mask(valid, T, self.options.window))
        return self._project(y), kv_memory.keep_last(state, (k_all, v_all, valid))  # kept in fp32

    def _with_sinks(self, q, k, v, state: State) -> tuple[torch.Tensor, State]:
        """Attention over ``[sink slots ; memory ; segment]``; the segment's first tokens fill empty sink slots.

        Sink tokens are never window keys: the memory marks them invalid, so
        each key is seen once, through its sink slot.
        """
        k_mem, v_mem, valid_mem, k_sink, v_sink, sink_valid = state
        B, T, S, M, W = q.shape[0], q.shape[1], self.options.sinks, self.mem_len, self.options.window
        base = self.options.rope_base
        slot = sink_valid.sum(1, keepdim=True) + torch.arange(T, device=q.device)  # [B, T]: sink slot of each token
        is_sink = slot < S
        (k_all, v_all), valid = kv_memory.extend((k_mem, v_mem), (k, v), valid_mem)
        seg_sink = torch.cat([torch.zeros_like(valid_mem), is_sink], dim=1)  # [B, M + T]
        windowed = valid & ~seg_sink
        allowed = kv_memory.causal_mask(windowed, T, W) | kv_memory.causal_mask(seg_sink, T, None)
        allowed = torch.cat([sink_valid[:, None, None, :].expand(B, 1, T, S), allowed], dim=-1)
        cache_pos = allowed[:, 0].sum(-1) - 1  # [B, T]: keys seen before the query (sinks, then window)

        positions = torch.arange(M + T, device=q.device)
        zeros = torch.zeros_like(k_all)
        window_keys = torch.cat([rotary(k_all, positions, base), zeros], dim=-1)
        as_sinks = torch.cat([zeros[:, M:], rotary(k, slot.clamp(max=S), base)], dim=-1)  # segment tokens in sink slots
        segment_keys = torch.where(is_sink[..., None, None], as_sinks, window_keys[:, M:])
        sink_keys = torch.cat([torch.zeros_like(k_sink), rotary(k_sink, torch.arange(S, device=q.device), base)], -1)
        keys = torch.cat([sink_keys.to(k.dtype), window_keys[:, :M], segment_keys], dim=1)
        queries = torch.cat([rotary(q, positions[M:], base), rotary(q, cache_pos, base)], dim=-1)
        values = torch.cat([v_sink.to(v.dtype), v_all], dim=1)
        y = F.scaled_dot_product_attention(
            queries.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2),
            attn_mask=allowed, scale=self.head_dim**-0.5,
        )

        # fill empty sink slots with the segment's first tokens
        source = torch.arange(S, device=q.device) - sink_valid.sum(1, keepdim=True)  # [B, S]: segment index
        fill = (source >= 0) & (source < T)
        index = source.clamp(0, T - 1)[..., None, None].expand(B, S, *k.shape[2:])
        new_sinks = tuple(
            torch.where(fill[..., None, None], t.gather(1, index).to(old.dtype), old)
            for t, old in ((k, k_sink), (v, v_sink))
        )
        memory = kv_memory.keep_last((k_mem, v_mem, valid_mem), (k_all, v_all, windowed))
        return self._project(y), memory + new_sinks + (sink_valid | fill,)

    def _project(self, y: torch.Tensor) -> torch.Tensor:
        """Heads ``[B, H, T, D]`` -> output ``[B, T, d_model]``."""
        B, _, T, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(B, T, self.d_model))

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        y, state = self.forward_parallel(x[:, None], state)
        return y[:, 0], state
