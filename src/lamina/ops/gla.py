"""Matrix-state gated linear attention: ``S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T``, ``o_t = scale * q_t S_t``.

One op serves GLA, HGRN2, RetNet, Mamba2 (SSD) and linear attention; they
differ only in how q, k, v and g are made. Per head, with ``q_t`` a row vector.

Layout: ``q, k [B, T, H, K]``, ``v [B, T, H, V]``; ``g`` the log decay (``<= 0``),
either per key channel ``[B, T, H, K]`` (GLA, HGRN2) or per head ``[B, T, H]``
(RetNet, Mamba2; ``g = 0`` is linear attention). The state ``[B, H, K, V]``
accumulates in fp32 (float64 stays float64); outputs come back in ``q``'s dtype.

Forms, all with the same signature and results:

- :func:`gla_reference`: a plain loop of :func:`gla_step` (the float64 reference).
- :func:`gla_chunk`: chunkwise. Chunks of ``chunk_size`` tokens (a power of
  two) see the state entering them through ``q_i * exp(P_i)`` and leave their
  contribution through ``k_j * exp(R_j)``, ``P`` the log decay from the chunk's
  start to ``i`` and ``R`` from ``j`` to the chunk's end; the chunks' states
  are chained by the gated scan (:mod:`lamina.ops.scan`). Inside a chunk:

  * scalar decay: the ``[L, L]`` decay matrix ``exp(sum_{j<m<=i} g_m)`` times ``q k^T``;
  * per-channel decay: binary secondary chunking. Every pair ``j < i`` of a
    chunk meets at exactly one level of a binary split, as a key in the first
    half and a query in the second half of some block of ``2s`` tokens; with
    the boundary ``b`` between the halves as reference point,
    ``exp(G_i - G_j) = exp(G_i - G_b) * exp(G_b - G_j)``, so that level is one
    matrix product of ``q * exp(prefix of its half)`` and
    ``k * exp(suffix of its half)``. ``log2(L)`` levels plus the diagonal
    ``q_i . k_i`` cover the chunk with ``O(T L K)`` work and ``O(T K)`` memory
    per level (no ``[L, L, K]`` tensor).

  Numerics: every exponent is a sum of gates (all ``<= 0``) taken over exactly
  its own span: prefix and suffix sums inside a block, the decay matrix by a
  masked cumulative sum. No factor exceeds 1, so nothing overflows at any
  length or gate value, and no exponent is a difference of two long cumulative
  sums, so large gates elsewhere in a chunk cost no precision (the usual
  ``exp(G_i - G_j)`` from one running cumsum loses ``|G| * 1e-7`` in fp32).
  The backward pass is autograd through these products (the chunk chaining
  has the scan's own backward).
- :func:`gla_step`: one token (decoding).
- :func:`gla`: what mixers call; the fast form on this device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lamina.ops.precision import acc_dtype, check_matrix_state_inputs, outside_autocast
from lamina.ops.scan import gated_scan_chunk

# Forward + backward on one CPU thread, B = 4, H = 4, K = V = 64, T = 512 and 2048:
# chunks of 64 were the fastest for both gate kinds, 2-17% ahead of 128, 13-35%
# ahead of 32 and 1.4-2x ahead of 16. Shorter inputs use the next power of two
# above their length, so a short segment is not padded to 64.
DEFAULT_CHUNK = 64


def _check(q, k, v, g, initial_state) -> None:
    check_matrix_state_inputs("gla", q, k, v, initial_state)
    if g.shape != q.shape and g.shape != q.shape[:3]:
        raise ValueError(f"gla needs g of shape {tuple(q.shape)} or {tuple(q.shape[:3])}, got {tuple(g.shape)}")


@outside_autocast
def gla_step(q, k, v, g, state, *, scale=None):
    """One token: ``q, k [B, H, K]``, ``v [B, H, V]``, ``g [B, H, K]`` or ``[B, H]``, ``state [B, H, K, V]``.

    Returns ``(o [B, H, V] in q's dtype, new state in the accumulation dtype)``.
    """
    acc = acc_dtype(q, k, v, g, state)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    decay = torch.exp(g.to(acc))
    decay = decay[..., None] if g.dim() == 3 else decay[..., None, None]
    state = torch.addcmul(decay * state.to(acc), k.to(acc)[..., :, None], v.to(acc)[..., None, :])
    out = torch.einsum("bhk,bhkv->bhv", q.to(acc), state) * scale
    return out.to(q.dtype), state


def gla_reference(q, k, v, g, *, scale=None, initial_state=None, output_final_state=False):
    """Plain loop over time: ``(out [B, T, H, V] in q's dtype, final state or None)``."""
    _check(q, k, v, g, initial_state)
    B, T, H, K = q.shape
    acc = acc_dtype(q, k, v, g, initial_state)
    state = q.new_zeros(B, H, K, v.shape[-1], dtype=acc) if initial_state is None else initial_state.to(acc)
    outputs = []
    for t in range(T):
        o, state = gla_step(q[:, t], k[:, t], v[:, t], g[:, t], state, scale=scale)
        outputs.append(o)
    out = torch.stack(outputs, 1) if outputs else q.new_zeros(B, 0, H, v.shape[-1])
    return out, (state if output_final_state else None)


def _decay_matrix(g: torch.Tensor) -> torch.Tensor:
    """``[..., L] -> [..., L, L]``: ``exp(sum_{j<m<=i} g_m)`` for ``i >= j``, else 0."""
    L = g.shape[-1]
    later = torch.ones(L, L, dtype=torch.bool, device=g.device).tril(-1)  # [m, j]: m > j
    spans = g[..., :, None].expand(*g.shape, L).masked_fill(~later, 0).cumsum(-2)  # [i, j]: sum_{j<m<=i}
    causal = torch.ones(L, L, dtype=torch.bool, device=g.device).tril()
    return torch.exp(spans.masked_fill(~causal, float("-inf")))


def _within_scalar(q, k, v, g, L):
    """Per-head decay, ``q, k, v [B, H, T, *]``, ``g [B, H, T]`` with ``T`` a multiple of ``L``.

    Returns the within-chunk outputs ``[B, H, T, V]`` and, per token, the log
    decay from its chunk's start to it (inclusive) and from it to the chunk's
    end (exclusive), both ``[B, H, T, 1]``.
    """
    B, H, T, _ = q.shape
    chunks = lambda x: x.reshape(B, H, T // L, L, *x.shape[3:])  # noqa: E731
    gc = chunks(g)
    scores = chunks(q) @ chunks(k).transpose(-1, -2) * _decay_matrix(gc)
    out = (scores @ chunks(v)).reshape(B, H, T, v.shape[-1])
    prefix = gc.cumsum(-1)
    suffix = F.pad(gc[..., 1:], (0, 1)).flip(-1).cumsum(-1).flip(-1)
    return out, prefix.reshape(B, H, T, 1), suffix.reshape(B, H, T, 1)


def _within_vector(q, k, v, g, L):
    """Per-channel decay by binary secondary chunking (module notes); returns like :func:`_within_scalar`.

    Level ``s`` pairs the halves of blocks of ``2s`` tokens. ``prefix`` holds
    each token's decay since the start of its block of ``s`` (inclusive) and
    ``suffix`` its decay to the block's end (exclusive); merging two halves
    adds the first half's total to the second half's prefixes and the second
    half's total to the first half's suffixes, so every span is a sum of its
    own gates only.
    """
    B, H, T, K = q.shape
    out = (q * k).sum(-1, keepdim=True) * v  # i == j: no decay
    prefix, suffix = g, torch.zeros_like(g)
    s = 1
    while s < L:
        halves = lambda x: x.view(B, H, T // (2 * s), 2, s, x.shape[-1]).unbind(3)  # noqa: E731
        (p1, p2), (r1, r2) = halves(prefix), halves(suffix)
        queries = halves(q)[1] * torch.exp(p2)  # decay from the halves' boundary to i
        keys = halves(k)[0] * torch.exp(r1)  # decay from j to the boundary
        out.view(B, H, T // (2 * s), 2, s, -1)[:, :, :, 1] += (queries @ keys.transpose(-1, -2)) @ halves(v)[0]
        prefix = torch.stack([p1, p2 + p1[..., -1:, :]], 3).view(B, H, T, K)
        suffix = torch.stack([r1 + p2[..., -1:, :], r2], 3).view(B, H, T, K)
        s *= 2
    return out, prefix, suffix


@outside_autocast
def gla_chunk(q, k, v, g, *, scale=None, initial_state=None, output_final_state=False, chunk_size=DEFAULT_CHUNK):
    """Chunkwise form (see the module notes): ``(out in q's dtype, final state or None)``."""
    _check(q, k, v, g, initial_state)
    if chunk_size < 1 or chunk_size & (chunk_size - 1):
        raise ValueError(f"gla chunk_size must be a power of two, got {chunk_size}")
    B, T, H, K = q.shape
    if T == 0:  # nothing to do: the state passes through
        return gla_reference(q, k, v, g, scale=scale, initial_state=initial_state,
                             output_final_state=output_final_state)
    acc = acc_dtype(q, k, v, g, initial_state)
    scale = K**-0.5 if scale is None else scale
    V, scalar, out_dtype = v.shape[-1], g.dim() == 3, q.dtype
    L = min(chunk_size, 1 << (T - 1).bit_length())
    pad = -T % L  # zero q, k, v and g = 0 leave the state alone
    q, k, v, g = (
        F.pad(x.to(acc).transpose(1, 2), (0, 0) * (x.dim() - 3) + (0, pad)) for x in (q, k, v, g)
    )  # [B, H, T', *]
    q = q * scale
    Tp, N = T + pad, (T + pad) // L

    within = _within_scalar if scalar else _within_vector
    out, prefix, suffix = within(q, k, v, g, L)

    # Across chunks: what each chunk reads from, and adds to, the state entering it.
    chunks = lambda x: x.reshape(B, H, N, L, x.shape[-1])  # noqa: E731
    reads = chunks(q * torch.exp(prefix))
    writes = chunks(k * torch.exp(suffix)).transpose(-1, -2) @ chunks(v)  # [B, H, N, K, V]
    decays = chunks(prefix)[..., -1, :, None].expand(B, H, N, K, V)  # each chunk's total, per key row
    states, _ = gated_scan_chunk(
        writes.transpose(1, 2), decays.transpose(1, 2),
        initial_state=None if initial_state is None else initial_state.to(acc),
    )  # [B, N, H, K, V]: the state after each chunk
    first = q.new_zeros(B, 1, H, K, V) if initial_state is None else initial_state.to(acc)[:, None]
    entering = torch.cat([first, states[:, :-1]], 1).transpose(1, 2)  # [B, H, N, K, V]
    out = out + (reads @ entering).reshape(B, H, Tp, V)
    out = out[:, :, :T].transpose(1, 2).to(out_dtype)
    return out, (states[:, -1] if output_final_state else None)


def gla(q, k, v, g, *, scale=None, initial_state=None, output_final_state=False):
    """Gated linear attention in the fastest form for this device (the chunk form until a GPU kernel exists)."""
    return gla_chunk(q, k, v, g, scale=scale, initial_state=initial_state, output_final_state=output_final_state)
