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
  once; the chunks' summaries (total decay, local final state) are then
  combined by a log-depth (Hillis-Steele) scan, which also absorbs the initial
  state, and each token adds its decay since the chunk's start times the state
  entering the chunk. Python does ``chunk_size + log2(T / chunk_size)`` steps
  whatever ``T``. Only gates (all ``<= 0``) are exponentiated and decays are
  products of factors ``<= 1``, so nothing overflows at any length or gate
  value. A single chunk (``chunk_size >= T``) is a plain loop over time from
  the initial state, with nothing to combine. The backward pass is the same
  scan run in reverse (``dL/dh_t = grad_t + exp(g_{t+1}) dL/dh_{t+1}``), so
  training keeps only the decays and ``h``, not an autograd graph per step.
- :func:`gated_scan_step`: one token (decoding).
- :func:`gated_scan`: what mixers call; the fast form on this device: on CPU,
  the plain loop once a time step spans :data:`LOOP_MIN_WIDTH` values (the
  chunked form's extra passes over the whole sequence then cost more than
  Python's per-step overhead), else chunks of :data:`DEFAULT_CHUNK`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lamina.ops.precision import acc_dtype

# Forward + backward on 2 CPU cores, B = 8, T = 256..16384, D = 256..1024: chunks
# of 32 and 64 tie within noise and beat 16 and 128 by up to 1.5x; 32 pads short
# segments less.
DEFAULT_CHUNK = 32
# Forward + backward on one AMD EPYC core (CPU time), the plain loop against chunks of 32:
# 1.7x faster at B x D = 2 x 1024 and 16 x 256 (T = 128..2048), 1.4x at 4 x 256, 1.3x slower
# at 1 x 256 and 4x slower at 1 x 64 (T = 1024), where Python's per-step overhead dominates.
LOOP_MIN_WIDTH = 1024


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
    """Inclusive Hillis-Steele scan over dim 1 of pairs (decay, value); returns the values.

    ``(a1, b1) then (a2, b2) = (a1 * a2, a2 * b1 + b2)``; ``a`` is always a
    product of decays ``<= 1``, so it never exceeds 1.
    """
    n, offset = a.shape[1], 1
    while offset < n:
        b = torch.cat([b[:, :offset], torch.addcmul(b[:, offset:], a[:, offset:], b[:, :-offset])], dim=1)
        a = torch.cat([a[:, :offset], a[:, offset:] * a[:, :-offset]], dim=1)
        offset *= 2
    return b


def _loop(x: torch.Tensor, decay: torch.Tensor, h0: torch.Tensor | None, reverse: bool) -> torch.Tensor:
    """The recurrence one position at a time over dim 1 of ``[B, T, C]`` tensors, started from ``h0``.

    Forward: ``h_t = decay_t * h_{t-1} + x_t``. Reverse: ``h_t = decay_{t+1} * h_{t+1} + x_t`` with
    ``h_{T-1} = x_{T-1} + h0``. Every step writes straight into the output.
    """
    h = torch.empty_like(x)
    xs, ds, hs = x.unbind(1), decay.unbind(1), h.unbind(1)
    T = x.shape[1]
    if reverse:
        prev = hs[-1].copy_(xs[-1]) if h0 is None else hs[-1].copy_(xs[-1]).add_(h0)
        for t in range(T - 2, -1, -1):
            prev = _addcmul_into(hs[t], xs[t], ds[t + 1], prev)
    else:
        prev = hs[0].copy_(xs[0]) if h0 is None else _addcmul_into(hs[0], xs[0], ds[0], h0)
        for t in range(1, T):
            prev = _addcmul_into(hs[t], xs[t], ds[t], prev)
    return h


def _addcmul_into(out: torch.Tensor, x: torch.Tensor, d: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``out = x + d * h`` written into the view ``out`` (of the scan's output), which it returns.

    Eagerly it is one ``out=`` call; ``torch.compile`` cannot trace an ``out=`` into a view (Dynamo breaks
    the graph there), so a compiled scan computes the value and copies it in, which it fuses.
    """
    if torch.compiler.is_compiling():
        return out.copy_(torch.addcmul(x, d, h))
    return torch.addcmul(x, d, h, out=out)


def _chunks(x: torch.Tensor, decay: torch.Tensor, h0: torch.Tensor | None, chunk_size: int) -> torch.Tensor:
    """The forward recurrence in chunks of ``chunk_size`` positions (see the module notes)."""
    B, T, C = x.shape
    L = chunk_size
    n = -(-T // L)
    pad = n * L - T
    if pad:  # decay 1, x = 0 is the identity step: the padding leaves the state alone
        x, decay = F.pad(x, (0, 0, 0, pad)), F.pad(decay, (0, 0, 0, pad), value=1.0)
    xc, dc = x.view(B, n, L, C), decay.view(B, n, L, C)
    local = torch.empty_like(xc)  # the scan inside each chunk, from a zero state
    local[:, :, 0] = xc[:, :, 0]
    for t in range(1, L):
        _addcmul_into(local[:, :, t], xc[:, :, t], dc[:, :, t], local[:, :, t - 1])
    # decay from each chunk's start: a product of factors <= 1 (it may underflow to 0, never overflow)
    since_start = torch.cumprod(dc, dim=2)
    start = x.new_zeros(B, 1, C) if h0 is None else h0.unsqueeze(1)
    carry = _combine_scan(
        torch.cat([x.new_ones(B, 1, C), since_start[:, :, -1]], dim=1),
        torch.cat([start, local[:, :, -1]], dim=1),
    )  # carry[:, j] = the state entering chunk j
    return local.addcmul_(since_start, carry[:, :-1].unsqueeze(2)).view(B, n * L, C)[:, :T]


@torch.no_grad()
def _scan(x: torch.Tensor, decay: torch.Tensor, h0: torch.Tensor | None, chunk_size: int, reverse: bool = False):
    """The recurrence on ``[B, T, C]`` tensors of the accumulation dtype (see :func:`_loop` for ``reverse``).

    One chunk (``chunk_size >= T``) is a plain loop from ``h0``; more are scanned in chunks, the reverse
    direction on flipped copies."""
    T = x.shape[1]
    if chunk_size >= T:
        return _loop(x, decay, h0, reverse)
    if not reverse:
        return _chunks(x, decay, h0, chunk_size)
    decay_next = torch.cat([decay[:, 1:], decay.new_ones(decay[:, :1].shape)], dim=1)
    return _chunks(x.flip(1), decay_next.flip(1), h0, chunk_size).flip(1)


class _GatedScan(torch.autograd.Function):
    """Forward scan; backward = the same scan in reverse plus elementwise terms."""

    @staticmethod
    def forward(ctx, x, g, h0, chunk_size):
        B, T = x.shape[:2]
        acc = acc_dtype(x, g)
        decay = torch.exp(g.reshape(B, T, -1).to(acc))
        h = _scan(x.reshape(B, T, -1).to(acc), decay, None if h0 is None else h0.reshape(B, -1).to(acc), chunk_size)
        ctx.save_for_backward(decay, h, h0)
        ctx.chunk_size = chunk_size
        ctx.dtypes = (x.dtype, g.dtype)
        ctx.shape = x.shape
        return h.reshape(x.shape).to(x.dtype), h[:, -1].reshape(x.shape[:1] + x.shape[2:]).clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, grad_last):
        decay, h, h0 = ctx.saved_tensors
        B, T, C = h.shape
        acc = h.dtype
        x_dtype, g_dtype = ctx.dtypes
        # delta_t = dL/dh_t = grad_t + decay_{t+1} delta_{t+1}, started from the final state's gradient
        delta = _scan(
            grad_out.reshape(B, T, C).to(acc), decay, grad_last.reshape(B, C).to(acc), ctx.chunk_size, reverse=True
        )
        grad_x = delta.reshape(ctx.shape).to(x_dtype)
        grad_g = grad_h0 = None
        if ctx.needs_input_grad[1]:  # dL/dg_t = delta_t * decay_t * h_{t-1}
            grad_g = delta * decay
            grad_g[:, 1:].mul_(h[:, :-1])
            if h0 is None:
                grad_g[:, 0].zero_()
            else:
                grad_g[:, 0].mul_(h0.reshape(B, C).to(acc))
            grad_g = grad_g.reshape(ctx.shape).to(g_dtype)
        if h0 is not None and ctx.needs_input_grad[2]:
            grad_h0 = (delta[:, 0] * decay[:, 0]).reshape(h0.shape).to(h0.dtype)
        return grad_x, grad_g, grad_h0, None


def gated_scan_chunk(x, g, *, initial_state=None, output_final_state=False, chunk_size=DEFAULT_CHUNK):
    """Chunkwise scan (see the module notes): ``(out in x.dtype, final state or None)``."""
    _check(x, g, initial_state)
    if x.shape[1] == 0:  # nothing to scan: the state passes through
        return gated_scan_reference(x, g, initial_state=initial_state, output_final_state=output_final_state)
    out, final = _GatedScan.apply(x, g, initial_state, chunk_size)
    return out, (final if output_final_state else None)


def gated_scan(x, g, *, initial_state=None, output_final_state=False):
    """The gated scan in the fastest form for this device (see the module notes)."""
    wide = x.device.type == "cpu" and x[:, :1].numel() >= LOOP_MIN_WIDTH
    return gated_scan_chunk(
        x, g, initial_state=initial_state, output_final_state=output_final_state,
        chunk_size=max(x.shape[1], 1) if wide else DEFAULT_CHUNK,
    )
