"""StreamingLLM's attention sinks for windowed attention (a part of ``attn``, not a mixer).

The first ``sinks`` keys/values of the stream are kept for good besides the
window: StreamingLLM's attention sinks (Xiao et al. 2024, section 3.2), which
keep a windowed model stable on unbounded streams. As there (section 3.2,
"positions within the cache"), a query's position is the number of keys it
sees before it (sinks first, then its window), each sink sits at its slot
index, and window keys keep their distances to the query. A sink's distance to
a query thus depends on how many keys that query sees, which a single rotation
of the keys cannot express: the sink scores use a second copy of the query
rotated to its cache position, against the sink keys in a second half of the
head dimension (zeros elsewhere), so one ``scaled_dot_product_attention`` call
still covers all keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lamina.ops import kv_memory
from lamina.ops.rotary import rotary

Tensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def attend_with_sinks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, memory: Tensors, sinks: Tensors,
                      window: int, base: float) -> tuple[torch.Tensor, Tensors, Tensors]:
    """Attention of a call's ``q, k, v [B, T, H, D]`` over ``[sink slots ; memory ; segment]``.

    ``memory`` is ``(keys, values, valid)`` of the window's last ``M`` tokens,
    ``sinks`` the same for the ``S`` sink slots (keys unrotated). The
    segment's first tokens fill empty sink slots. Sink tokens are never window
    keys: the memory marks them invalid, so each key is seen once, through its
    sink slot. Returns the heads' outputs ``[B, H, T, D]`` and the new memory
    and sinks.
    """
    (k_mem, v_mem, valid_mem), (k_sink, v_sink, sink_valid) = memory, sinks
    B, T, S, M, W = q.shape[0], q.shape[1], k_sink.shape[1], k_mem.shape[1], window
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
        attn_mask=allowed, scale=q.shape[-1] ** -0.5,
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
    return y, memory, (*new_sinks, sink_valid | fill)
