"""The elementwise gated scan ``h_t = exp(g_t) * h_{t-1} + x_t`` (HGRN, minGRU, RG-LRU, LRU).

Layout ``[B, T, ...]``: any trailing channel dims, each channel its own
recurrence. Gates ``g <= 0`` are log decays. The state accumulates in at least
fp32 (float64 stays float64); outputs come back in ``x``'s dtype and the final
state in the accumulation dtype.

Forms, all with the same signature and results:

- :func:`gated_scan_reference`: a plain loop over time, differentiated by
  autograd; the float64 reference in tests.
- :func:`gated_scan_chunk`: chunkwise. Within chunks of ``chunk_size`` tokens
  a loop over the chunk's positions runs every chunk, batch and channel at
  once; the chunks' summaries (total log decay, local final state) are then
  combined by a log-depth (Hillis-Steele) scan, which also absorbs the initial
  state, and each token adds its decay since the chunk's start times the state
  entering the chunk. Python does ``chunk_size + log2(T / chunk_size)`` steps
  whatever ``T``. Only gates and sums of gates (all ``<= 0``) are
  exponentiated and decays are products of factors ``<= 1``, so nothing
  overflows at any length or gate value. The backward pass is the same scan
  run in reverse (``dL/dh_t = grad_t + exp(g_{t+1}) dL/dh_{t+1}``), so training
  keeps only ``g`` and ``h``, not an autograd graph per step.
- :func:`gated_scan_step`: one token (decoding).
- :func:`gated_scan`: what mixers call; the fast form on this device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lamina.ops.precision import acc_dtype

# Forward + backward on 2 CPU cores, B = 8, T = 256..16384, D = 256..1024: chunks
# of 32 and 64 tie within noise and beat 16 and 128 by up to 1.5x; 32 pads short
# segments less. (A plain step loop with the same backward is up to 2x faster on
# CPU when B * D >= 2048, but 13x slower at B = 1, D = 64, and hopeless on GPU.)
DEFAULT_CHUNK = 32


def _check(x: torch.Tensor, g: torch.Tensor, initial_state: torch.Tensor | None) -> None:
    if x.dim() < 2 or g.shape != x.shape:
        raise ValueError(
            f"gated scan needs x and g of one shape [B, T, ...], got {tuple(x.shape)} and {tuple(g.shape)}"
        )
    if initial_state is not None and initial_state.shape != x.shape[:1] + x.shape[2:]:
        raise ValueError(
            f"initial_state must have shape {tuple(x.shape[:1] + x.shape[2:])}, got {tuple(initial_state.shape)}"
        )


def gated_scan_reference(x, g, *, initial_state=None, output_final_state=False):
    """Plain loop over time: ``(out [B, T, ...] in x.dtype, final state or None)``."""
    _check(x, g, initial_state)
    acc = acc_dtype(x, g)
    h = x.new_zeros(x.shape[:1] + x.shape[2:], dtype=acc) if initial_state is None else initial_state.to(acc)
    outputs = []
    for t in range(x.shape[1]):
        h = torch.exp(g[:, t].to(acc)) * h + x[:, t].to(acc)
        outputs.append(h)
    out = torch.stack(outputs, dim=1) if outputs else x.new_zeros(x.shape, dtype=acc)
    return out.to(x.dtype), (h if output_final_state else None)


def gated_scan_step(x_t, g_t, state):
    """One token: ``exp(g_t) * state + x_t`` in the accumulation dtype (the output is the new state)."""
    acc = acc_dtype(x_t, g_t, state)
    return torch.addcmul(x_t.to(acc), torch.exp(g_t.to(acc)), state.to(acc))


def _combine_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Inclusive Hillis-Steele scan over dim 1 of pairs (log decay, value); returns the values.

    ``(a1, b1) then (a2, b2) = (a1 + a2, exp(a2) * b1 + b2)``; ``a`` is always a
    sum of gates, so ``exp`` never exceeds 1.
    """
    n, offset = a.shape[1], 1
    while offset < n:
        b = torch.cat([b[:, :offset], torch.addcmul(b[:, offset:], torch.exp(a[:, offset:]), b[:, :-offset])], dim=1)
        a = torch.cat([a[:, :offset], a[:, offset:] + a[:, :-offset]], dim=1)
        offset *= 2
    return b


@torch.no_grad()
def _scan(x: torch.Tensor, g: torch.Tensor, h0: torch.Tensor | None, chunk_size: int):
    """The chunked scan on ``[B, T, C]`` tensors of the accumulation dtype: ``(h [B, T, C], h_T [B, C])``."""
    B, T, C = x.shape
    L = min(chunk_size, T)
    n = -(-T // L)
    pad = n * L - T
    if pad:  # g = 0, x = 0 is the identity step: the padding leaves the state alone
        x, g = F.pad(x, (0, 0, 0, pad)), F.pad(g, (0, 0, 0, pad))
    xc, gc = x.view(B, n, L, C), g.view(B, n, L, C)
    decay = torch.exp(gc)
    local = torch.empty_like(xc)  # the scan inside each chunk, from a zero state
    local[:, :, 0] = xc[:, :, 0]
    for t in range(1, L):
        torch.addcmul(xc[:, :, t], decay[:, :, t], local[:, :, t - 1], out=local[:, :, t])
    start = x.new_zeros(B, 1, C) if h0 is None else h0.unsqueeze(1)
    carry = _combine_scan(
        torch.cat([x.new_zeros(B, 1, C), gc.sum(2)], dim=1),
        torch.cat([start, local[:, :, -1]], dim=1),
    )  # carry[:, j] = the state entering chunk j; carry[:, n] = the final state
    # decay from each chunk's start: a product of factors <= 1 (it may underflow to 0, never overflow)
    h = torch.addcmul(local, torch.cumprod(decay, dim=2), carry[:, :-1].unsqueeze(2)).view(B, n * L, C)
    return h[:, :T], carry[:, n]


class _GatedScan(torch.autograd.Function):
    """Chunked forward; backward = the same scan in reverse plus elementwise terms."""

    @staticmethod
    def forward(ctx, x, g, h0, chunk_size):
        B, T = x.shape[:2]
        acc = acc_dtype(x, g)
        h, h_last = _scan(
            x.reshape(B, T, -1).to(acc),
            g.reshape(B, T, -1).to(acc),
            None if h0 is None else h0.reshape(B, -1).to(acc),
            chunk_size,
        )
        ctx.save_for_backward(g, h, h0)
        ctx.chunk_size = chunk_size
        ctx.dtypes = (x.dtype, g.dtype)
        ctx.shape = x.shape
        return h.reshape(x.shape).to(x.dtype), h_last.reshape(x.shape[:1] + x.shape[2:])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, grad_last):
        g, h, h0 = ctx.saved_tensors
        B, T, C = h.shape
        acc = h.dtype
        x_dtype, g_dtype = ctx.dtypes
        g = g.reshape(B, T, C).to(acc)
        # delta_t = dL/dh_t: the reverse scan of grad_out with gates shifted by one step,
        # started from the final state's gradient.
        g_next = F.pad(g[:, 1:], (0, 0, 0, 1))
        delta, _ = _scan(
            grad_out.reshape(B, T, C).to(acc).flip(1), g_next.flip(1), grad_last.reshape(B, C).to(acc), ctx.chunk_size
        )
        delta = delta.flip(1)
        grad_x = delta.reshape(ctx.shape).to(x_dtype)
        grad_g = grad_h0 = None
        if ctx.needs_input_grad[1]:
            first = h.new_zeros(B, 1, C) if h0 is None else h0.reshape(B, 1, C).to(acc)
            h_prev = torch.cat([first, h[:, :-1]], dim=1)
            grad_g = (delta * torch.exp(g) * h_prev).reshape(ctx.shape).to(g_dtype)
        if h0 is not None and ctx.needs_input_grad[2]:
            grad_h0 = (delta[:, 0] * torch.exp(g[:, 0])).reshape(h0.shape).to(h0.dtype)
        return grad_x, grad_g, grad_h0, None


def gated_scan_chunk(x, g, *, initial_state=None, output_final_state=False, chunk_size=DEFAULT_CHUNK):
    """Chunkwise scan (see the module notes): ``(out in x.dtype, final state or None)``."""
    _check(x, g, initial_state)
    if x.shape[1] == 0:  # nothing to scan: the state passes through
        return gated_scan_reference(x, g, initial_state=initial_state, output_final_state=output_final_state)
    out, final = _GatedScan.apply(x, g, initial_state, chunk_size)
    return out, (final if output_final_state else None)


def gated_scan(x, g, *, initial_state=None, output_final_state=False):
    """The gated scan in the fastest form for this device (the chunk form until a GPU kernel exists)."""
    return gated_scan_chunk(x, g, initial_state=initial_state, output_final_state=output_final_state)
