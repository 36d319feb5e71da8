"""Titans' neural long-term memory with a linear memory per head, learned at test time.

Behrouz, Zhong & Mirrokni 2025, "Titans: Learning to Memorize at Test Time",
section 3. Per head the memory is a matrix ``M [K, V]`` (the map ``k -> k M``)
trained online on the associative loss ``l(M; x_t) = ||k_t M - v_t||^2``
(eq. 12), whose gradient ``2 k_t^T (k_t M - v_t)`` is the "surprise"; with
momentum and forgetting (eqs. 13-14)::

    S_t = eta_t S_{t-1} - theta_t grad l(M_anchor; x_t)      momentum ("past surprise")
    M_t = (1 - alpha_t) M_{t-1} + S_t                        weight decay ("forgetting")
    o_t = q_t M_t                                            retrieval (eq. 15), with the updated memory

Gates are passed in log space: ``log_eta = log eta_t`` and ``log_keep =
log(1 - alpha_t)`` (both ``<= 0``), and ``theta`` (``>= 0``) as it is; all
``[B, T, H]``.

Chunks (section 3.2). The sequence is cut into chunks of ``chunk_size = b``
tokens, and every gradient in a chunk is taken at ``M_anchor``, the memory
entering the chunk. This is the paper's approximation for parallel training,
and it is *the definition* of this op: all forms compute exactly this
function. With ``b = 1`` the anchor is ``M_{t-1}`` and the op is the exact
per-token rule. Chunks are counted from the stream's start, not the call's:
``offset`` ``[B]`` says how many tokens of the current chunk each sequence
has already seen, and the state carries the anchor, so a stream cut into
calls anywhere gives the same result as one call.

State: ``(M, S, anchor)``, each ``[B, H, K, V]``, accumulated in fp32 (or
wider). Invariant: at a chunk boundary (``offset == 0``) ``anchor == M``.

Forms:

- :func:`neural_memory_reference`: a loop of :func:`neural_memory_step`
  (the float64 reference), the anchor switching at each boundary.
- :func:`neural_memory_chunk`: chunk-parallel. With the gradients fixed at
  the anchor, the chunk's writes ``u_s = k_s^T w_s``, ``w_s = 2 theta_s
  (v_s - k_s M_anchor)``, enter two stacked linear recurrences, so inside a
  chunk, with ``DA[t, r] = prod_{r<i<=t} (1 - alpha_i)`` and ``DE[r, s] =
  prod_{s<i<=r} eta_i`` (lower triangular; ``segsum`` of the log gates, so
  every exponent is a sum of gates over its own span and ``<= 0``), and
  ``A_t``, ``E_t`` the products from the chunk's start::

      M_t = A_t M_0 + (DA E)_t S_0 + sum_{s<=t} (DA DE)[t, s] k_s^T w_s
      S_t = E_t S_0 + sum_{s<=t} DE[t, s] k_s^T w_s
      o_t = A_t q_t M_0 + (DA E)_t q_t S_0 + sum_{s<=t} (DA DE)[t, s] (q_t . k_s) w_s

  the gated-linear-attention form with a two-level decay ``C = DA DE``. As
  ``w`` is linear in the anchor (the memory entering the chunk), each chunk
  maps ``[M; S]`` linearly: the decay matrices, ``q k^T`` and a ``[2K, 2K]``
  transition per chunk are built for all chunks at once, then a loop of one
  ``[2K, 2K] x [2K, V]`` product per chunk carries ``[M; S]``, and the
  outputs are one batched product. Sequences whose ``offset`` differ are
  shifted (zero tokens with ``theta = 0`` and gates 1, the identity step) so
  their chunk boundaries line up: such a slot keeps ``S`` (``eta = 1``,
  ``theta = 0``) and adds nothing to ``M`` (its column of ``DA`` is zeroed:
  ``M_t = (1 - alpha_t) M_{t-1} + live_t S_t``). The backward pass is autograd.
- :func:`neural_memory_step`: one token (decoding).
- :func:`neural_memory_read`: ``q M`` with a given memory, no write.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lamina.ops.decay_bias import segsum
from lamina.ops.precision import acc_dtype, check_matrix_state_inputs, outside_autocast


def _check(q, k, v, theta, log_eta, log_keep, chunk_size) -> None:
    check_matrix_state_inputs("neural_memory", q, k, v, None)
    for name, g in (("theta", theta), ("log_eta", log_eta), ("log_keep", log_keep)):
        if g.shape != q.shape[:3]:
            raise ValueError(f"{name} must have shape {tuple(q.shape[:3])} ([B, T, H]), got {tuple(g.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def _initial(initial_state, q, v, acc):
    if initial_state is not None:
        return tuple(s.to(acc) for s in initial_state)
    B, _, H, K = q.shape
    zero = q.new_zeros(B, H, K, v.shape[-1], dtype=acc)
    return zero, zero, zero


def _offsets(offset, q) -> torch.Tensor:
    if offset is None:
        return torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return offset.to(device=q.device, dtype=torch.long)


@outside_autocast
def neural_memory_step(q_t, k_t, v_t, theta_t, log_eta_t, log_keep_t, state, ends_chunk):
    """One token: ``q_t, k_t [B, H, K]``, ``v_t [B, H, V]``, gates ``[B, H]``, ``state = (M, S, anchor)``.

    ``ends_chunk`` (``[B]`` bool) marks sequences for which this token is the
    last of its chunk: their anchor becomes the new memory. Returns ``(o_t
    [B, H, V] in q_t's dtype, new state)``.
    """
    acc = acc_dtype(q_t, k_t, v_t, theta_t, *state)
    M, S, anchor = (s.to(acc) for s in state)
    k = k_t.to(acc)
    error = torch.einsum("bhk,bhkv->bhv", k, anchor) - v_t.to(acc)  # k M_anchor - v
    grad = 2 * k[..., :, None] * error[..., None, :]  # d/dM ||k M - v||^2 at the anchor
    S = torch.exp(log_eta_t.to(acc))[..., None, None] * S - theta_t.to(acc)[..., None, None] * grad
    M = torch.exp(log_keep_t.to(acc))[..., None, None] * M + S
    anchor = torch.where(ends_chunk.view(-1, 1, 1, 1), M, anchor)
    out = torch.einsum("bhk,bhkv->bhv", q_t.to(acc), M)
    return out.to(q_t.dtype), (M, S, anchor)


@outside_autocast
def neural_memory_read(q, memory):
    """Retrieval without a write, ``q M``: ``q [B, T, H, K]``, ``memory [B, H, K, V]`` -> ``[B, T, H, V]``.

    In the accumulation dtype of both (memory as context, section 4.1, reads the memory as it was
    before a segment).
    """
    acc = acc_dtype(q, memory)
    return torch.einsum("bthk,bhkv->bthv", q.to(acc), memory.to(acc))


def neural_memory_reference(q, k, v, theta, log_eta, log_keep, *, chunk_size=1, initial_state=None,
                            offset=None, output_final_state=False):
    """Token-by-token loop: ``(out [B, T, H, V], final (M, S, anchor) or None)``."""
    _check(q, k, v, theta, log_eta, log_keep, chunk_size)
    acc = acc_dtype(q, k, v, theta, log_eta, log_keep)
    state = _initial(initial_state, q, v, acc)
    pos = _offsets(offset, q)
    outputs = []
    for t in range(q.shape[1]):
        pos = (pos + 1) % chunk_size
        o, state = neural_memory_step(q[:, t], k[:, t], v[:, t], theta[:, t], log_eta[:, t], log_keep[:, t],
                                      state, pos == 0)
        outputs.append(o)
    B, T, H, _ = q.shape
    out = torch.stack(outputs, 1) if outputs else q.new_zeros(B, 0, H, v.shape[-1])
    return out, (state if output_final_state else None)


@outside_autocast
def neural_memory_chunk(q, k, v, theta, log_eta, log_keep, *, chunk_size=1, initial_state=None,
                        offset=None, output_final_state=False):
    """Chunk-parallel form (module notes): ``(out [B, T, H, V] in q's dtype, final state or None)``."""
    _check(q, k, v, theta, log_eta, log_keep, chunk_size)
    B, T, H, K = q.shape
    V = v.shape[-1]
    acc = acc_dtype(q, k, v, theta, log_eta, log_keep)
    M, S, anchor = _initial(initial_state, q, v, acc)
    if T == 0:
        return q.new_zeros(B, 0, H, V), ((M, S, anchor) if output_final_state else None)
    L = chunk_size
    pos = _offsets(offset, q)
    # the most any sequence is shifted right; torch.compile cannot read it back to the host without breaking the
    # graph, so a compiled call takes the bound L - 1 (its extra chunk holds only identity steps)
    lead = L - 1 if torch.compiler.is_compiling() else int(pos.max())
    n = -(-(T + lead) // L)
    Tp = n * L
    # slot j of the aligned buffer holds token j - pos_b of sequence b (else the identity step)
    src = torch.arange(Tp, device=q.device)[None, :] - pos[:, None]  # [B, Tp]
    real = (src >= 0) & (src < T)
    src = src.clamp(0, T - 1)

    def aligned(x):
        """``[B, T, H, *]`` -> ``[n, B, H, L, *]`` in ``acc``, shifted per sequence, identity outside."""
        x = x.to(acc)
        idx = src.view(B, Tp, *([1] * (x.dim() - 2))).expand(B, Tp, *x.shape[2:])
        x = torch.gather(x, 1, idx) * real.view(B, Tp, *([1] * (x.dim() - 2))).to(acc)
        x = x.reshape(B, n, L, *x.shape[2:])
        return x.permute(1, 0, 3, 2, *range(4, x.dim())).contiguous()

    qc, kc, vc = aligned(q), aligned(k), aligned(v)
    thc, lec, lkc = aligned(theta), aligned(log_eta), aligned(log_keep)  # [n, B, H, L]
    DE = torch.exp(segsum(lec))  # [.., t, s] = prod_{s<i<=t} eta_i
    live = real.view(B, n, 1, L).transpose(0, 1).to(acc)  # [n, B, 1, L]
    DA = torch.exp(segsum(lkc)) * live[..., None, :]  # a shifted-in slot adds nothing to M
    E = torch.exp(lec.cumsum(-1))  # from the chunk's start, through t
    A = torch.exp(lkc.cumsum(-1))
    C = DA @ DE  # coefficient of k_s^T w_s in M_t
    AE = (DA @ E[..., None])[..., 0]  # coefficient of S_0 in M_t
    scores = (qc @ kc.transpose(-1, -2)) * C
    write_M = (kc * C[..., -1, :, None]).transpose(-1, -2)  # [n, B, H, K, L]
    write_S = (kc * DE[..., -1, :, None]).transpose(-1, -2)
    theta2 = 2 * thc[..., None]
    # Chunk j maps its entering (M, S) and gradient anchor G to
    #   M' = A_L M + (DA E)_L S - write_M (2 theta K) G + write_M (2 theta V)
    #   S' = E_L S              - write_S (2 theta K) G + write_S (2 theta V)
    # and G = M for every chunk but the first: one [2K, 2K] x [2K, V] product per chunk.
    writes = torch.cat([write_M, write_S], -2)  # [n, B, H, 2K, L]
    pull = writes @ (theta2 * kc)  # [n, B, H, 2K, K]: what the anchor takes away
    push = writes @ (theta2 * vc)  # [n, B, H, 2K, V]: what the values add
    eye = torch.eye(K, dtype=acc, device=q.device)
    last = lambda x: x[..., -1, None, None]  # noqa: E731
    top = torch.cat([last(A) * eye, last(AE) * eye], -1)  # [n, B, H, K, 2K]
    bottom = torch.cat([torch.zeros_like(top[..., :K]), last(E) * eye], -1)
    transition = torch.cat([top, bottom], -2)
    transition = transition - F.pad(pull, (0, K))  # later chunks: the anchor is the entering M
    # the first chunk's anchor is the carried one, not M
    MS = torch.cat([M, S], -2)
    first = torch.cat([last(A)[0] * M + last(AE)[0] * S, last(E)[0] * S], -2) - pull[0] @ anchor + push[0]
    entering, shape = [MS], MS.shape
    MS = first.flatten(0, 1)
    # unbind: one gradient buffer for the loop, not one per chunk
    for A_j, B_j in zip(transition[1:].flatten(1, 2).unbind(0), push[1:].flatten(1, 2).unbind(0)):
        entering.append(MS.view(shape))
        MS = torch.baddbmm(B_j, A_j, MS)
    MS = MS.view(shape)
    M, S = MS[..., :K, :], MS[..., K:, :]
    entering = torch.stack(entering)  # [n, B, H, 2K, V]
    M_in, S_in = entering[..., :K, :], entering[..., K:, :]
    anchors = torch.cat([anchor[None], M_in[1:], M[None]])  # [n + 1, ...]: the gradient anchor of each chunk
    W = theta2 * (vc - kc @ anchors[:n])  # [n, B, H, L, V]
    out = A[..., None] * (qc @ M_in) + AE[..., None] * (qc @ S_in) + scores @ W  # [n, B, H, L, V]
    out = out.permute(1, 0, 3, 2, 4).reshape(B, Tp, H, V)
    back = (torch.arange(T, device=q.device)[None, :] + pos[:, None]).view(B, T, 1, 1).expand(B, T, H, V)
    out = torch.gather(out, 1, back).to(q.dtype)
    if not output_final_state:
        return out, None
    # the anchor is the memory entering the chunk that holds each sequence's next token
    current = torch.div(pos + T, L, rounding_mode="floor")  # 0: still in the first chunk
    anchor = anchors[current, torch.arange(B, device=q.device)]
    return out, (M, S, anchor)


def neural_memory(q, k, v, theta, log_eta, log_keep, *, chunk_size=1, initial_state=None, offset=None,
                  output_final_state=False):
    """The neural memory in the fastest form for this device (the chunk form)."""
    return neural_memory_chunk(q, k, v, theta, log_eta, log_keep, chunk_size=chunk_size,
                               initial_state=initial_state, offset=offset, output_final_state=output_final_state)
