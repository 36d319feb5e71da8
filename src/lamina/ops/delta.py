"""The (gated) delta rule: a matrix state edited by one step of online regression per token.

Per head, with ``S`` of shape ``[K, V]``, ``q_t`` and ``k_t`` row vectors of
width ``K``, ``v_t`` of width ``V``, ``beta_t`` a scalar write strength and
``g_t <= 0`` a scalar log decay::

    S_t = exp(g_t) (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t
    o_t = scale * q_t S_t

``g = None`` is DeltaNet (Yang, Wang, Zhang, Shen & Kim 2024, "Parallelizing
Linear Transformers with the Delta Rule over Sequence Length", section 3);
with ``g`` it is the gated delta rule of Gated DeltaNet (Yang, Kautz &
Hatamizadeh 2024, "Gated Delta Networks: Improving Mamba2 with Delta Rule",
section 3). Written as a correction, ``S_t = a S_{t-1} + beta_t k_t^T (v_t -
a k_t S_{t-1})`` with ``a = exp(g_t)``: the state's prediction for ``k_t`` is
moved towards ``v_t`` by a fraction ``beta_t``.

Layout: ``q, k [B, T, H, K]``, ``v [B, T, H, V]``, ``beta, g [B, T, H]``,
state ``[B, H, K, V]``. The state accumulates in at least fp32 (float64
stays float64); outputs come back in ``q``'s dtype, the final state in the
accumulation dtype. ``scale`` defaults to ``K ** -0.5``.

Stability: the op assumes ``||k_t|| <= 1`` (mixers L2-normalise keys) and
``0 <= beta_t <= 1``; then every transition ``I - beta k^T k`` has eigenvalues
in ``[0, 1]``, the state stays bounded at any length, and the chunk form's
triangular systems are well conditioned.

Forms, same signature and results:

- :func:`delta_rule_reference`: a plain loop applying the transition matrix
  literally (the float64 reference in tests).
- :func:`delta_rule_chunk`: chunkwise, with the WY/UT representation (DeltaNet
  section 3.1-3.2; Gated DeltaNet section 3.2). In each chunk of ``L`` tokens
  with state ``S0`` entering it, let ``G_t`` be the log decay from the chunk's
  start to ``t`` (a cumulative sum of ``g``) and ``D[t, s] = G_t - G_s`` for
  ``s <= t``. Then ``beta_t u_t`` (the corrected value written at ``t``)
  solves the unit lower-triangular system
  ``(I + M) X = beta V - diag(beta exp(G)) K S0`` with
  ``M[t, s] = beta_t (k_t . k_s) exp(D[t, s])`` for ``s < t``; so with
  ``U = (I + M)^-1 beta V`` and ``W = (I + M)^-1 diag(beta exp(G)) K``
  (one triangular solve for both), ``X = U - W S0`` and::

      O    = scale (diag(exp(G)) Q S0 + (Q K^T * exp(D), lower incl. diagonal) X)
      S_L  = exp(G_L) S0 + (diag(exp(G_L - G)) K)^T X
           = (exp(G_L) I - (diag(exp(G_L - G)) K)^T W) S0 + (diag(exp(G_L - G)) K)^T U

  Everything but the last line runs for all chunks at once; the last line is a
  loop of one ``[K, K] x [K, V]`` product per chunk. ``D`` is summed segment
  by segment (Mamba2's "segsum") rather than as a difference of cumulative
  sums, so it carries no cancellation error however strong the decay, and
  every exponent (``D``, ``G``, ``G_L - G``) is a sum of gates, hence ``<= 0``;
  entries above the diagonal, where the difference would be positive, are set
  to ``-inf`` before ``exp``. Nothing can overflow at any length. Lengths that
  are not a multiple of ``L`` are padded with ``k = v = q = beta = g = 0``,
  which is the identity step. The backward pass is autograd through these
  tensor operations.
- :func:`delta_rule_step`: one token (decoding), in the rank-one form.
- :func:`delta_rule`: what mixers call; the fast form on this device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lamina.ops.decay_bias import segsum
from lamina.ops.precision import acc_dtype, check_matrix_state_inputs, outside_autocast

# Forward + backward on 2 CPU cores (B, H, K = V, T) = (4, 4, 64, 1024 | 8192) and
# (8, 8, 32, 4096), with and without g: chunks of 64 are the fastest or within
# 25% of the fastest in every case, 32 is close behind, 16 is up to 1.9x slower
# (more sequential carry steps) and 128 up to 1.6x slower (quadratic work inside
# chunks). 64 is also the chunk of fla's GPU kernels for both rules, so a kernel
# can be checked against this form chunk for chunk.
DEFAULT_CHUNK = 64


def _check(q, k, v, beta, g, initial_state) -> None:
    check_matrix_state_inputs("the delta rule", q, k, v, initial_state)
    if beta.shape != q.shape[:3]:
        raise ValueError(f"beta must have shape {tuple(q.shape[:3])} ([B, T, H]), got {tuple(beta.shape)}")
    if g is not None and g.shape != q.shape[:3]:
        raise ValueError(f"g must have shape {tuple(q.shape[:3])} ([B, T, H]) or be None, got {tuple(g.shape)}")


def _initial(initial_state, q, v, acc) -> torch.Tensor:
    """The state entering the sequence in the accumulation dtype (zeros when none is given)."""
    if initial_state is not None:
        return initial_state.to(acc)
    B, _, H, K = q.shape
    return q.new_zeros(B, H, K, v.shape[-1], dtype=acc)


def delta_rule_reference(q, k, v, beta, g=None, *, scale=None, initial_state=None, output_final_state=False):
    """Plain loop with the transition matrix written out: ``(out [B, T, H, V], final state or None)``."""
    _check(q, k, v, beta, g, initial_state)
    acc = acc_dtype(q, k, v, beta, g)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    S = _initial(initial_state, q, v, acc)
    eye = torch.eye(q.shape[-1], dtype=acc, device=q.device)
    outputs = []
    for t in range(q.shape[1]):
        k_t, v_t, q_t = k[:, t].to(acc), v[:, t].to(acc), q[:, t].to(acc)
        b_t = beta[:, t].to(acc)[..., None, None]
        transition = eye - b_t * k_t[..., :, None] * k_t[..., None, :]
        if g is not None:
            transition = torch.exp(g[:, t].to(acc))[..., None, None] * transition
        S = transition @ S + b_t * k_t[..., :, None] * v_t[..., None, :]
        outputs.append(scale * (q_t[..., None, :] @ S)[..., 0, :])
    B, T, H, _ = q.shape
    out = torch.stack(outputs, dim=1) if outputs else v.new_zeros(B, T, H, v.shape[-1], dtype=acc)
    return out.to(q.dtype), (S if output_final_state else None)


@outside_autocast
def delta_rule_step(q_t, k_t, v_t, beta_t, g_t, state, *, scale=None):
    """One token (``q_t, k_t [B, H, K]``, ``v_t [B, H, V]``, ``beta_t, g_t [B, H]`` or ``g_t=None``).

    Returns ``(o_t [B, H, V] in q_t's dtype, new state [B, H, K, V] in the accumulation dtype)``.
    """
    acc = acc_dtype(q_t, k_t, v_t, beta_t, g_t, state)
    scale = q_t.shape[-1] ** -0.5 if scale is None else scale
    S = state.to(acc)
    if g_t is not None:
        S = torch.exp(g_t.to(acc))[..., None, None] * S
    k = k_t.to(acc)
    correction = beta_t.to(acc)[..., None] * (v_t.to(acc) - torch.einsum("bhk,bhkv->bhv", k, S))
    S = S + k[..., :, None] * correction[..., None, :]
    out = scale * torch.einsum("bhk,bhkv->bhv", q_t.to(acc), S)
    return out.to(q_t.dtype), S


@outside_autocast
def delta_rule_chunk(
    q, k, v, beta, g=None, *, scale=None, initial_state=None, output_final_state=False, chunk_size=DEFAULT_CHUNK
):
    """Chunkwise delta rule (see the module notes): ``(out in q.dtype, final state or None)``."""
    _check(q, k, v, beta, g, initial_state)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    B, T, H, K = q.shape
    V = v.shape[-1]
    acc = acc_dtype(q, k, v, beta, g)
    scale = K ** -0.5 if scale is None else scale
    S = _initial(initial_state, q, v, acc)
    if T == 0:  # nothing to do: the state passes through
        return q.new_zeros(B, 0, H, V), (S if output_final_state else None)

    L = min(chunk_size, T)
    n = -(-T // L)
    pad = n * L - T

    def blocks(x: torch.Tensor) -> torch.Tensor:
        """``[B, T, H, ...] -> [n, B, H, L, ...]`` in the accumulation dtype, zero-padded to ``n * L``.

        Chunks lead so that the carry loop below walks contiguous slices.
        """
        x = x.to(acc)
        if pad:
            x = F.pad(x, (0, 0) * (x.dim() - 2) + (0, pad))
        x = x.reshape(B, n, L, *x.shape[2:])
        return x.permute(1, 0, 3, 2, *range(4, x.dim())).contiguous()

    qc, kc, vc, bc = blocks(q) * scale, blocks(k), blocks(v), blocks(beta)[..., None]
    kb = bc * kc
    kk = kb @ kc.transpose(-1, -2)  # [t, s] = beta_t k_t . k_s
    qk = qc @ kc.transpose(-1, -2)
    if g is None:
        M, attn = kk.tril(-1), qk.tril()
        k_scaled, k_to_end, q_from_start, chunk_decay = kb, kc, qc, 1.0
    else:
        gc = blocks(g)
        G = gc.cumsum(-1)  # log decay from the chunk's start, through t
        decay = torch.exp(segsum(gc))  # exp(G_t - G_s) on and below the diagonal, 0 above
        M, attn = (kk * decay).tril(-1), qk * decay
        k_scaled = kb * torch.exp(G)[..., None]
        k_to_end = kc * decay[..., -1, :, None]  # exp(G_L - G_s) k_s
        q_from_start = qc * torch.exp(G)[..., None]
        chunk_decay = torch.exp(G[..., -1])[..., None, None]
    # (I + M)^-1 [beta V, k_scaled]: unitriangular=True reads M strictly below its diagonal.
    # (flattened to one batch dimension: batched solves are several times slower on 5-D tensors on CPU)
    rhs = torch.cat([bc * vc, k_scaled], dim=-1)
    UW = torch.linalg.solve_triangular(M.flatten(0, 2), rhs.flatten(0, 2), upper=False, unitriangular=True)
    UW = UW.view(rhs.shape)
    U, W = UW.split([V, K], dim=-1)
    k_end_t = k_to_end.transpose(-1, -2)
    eye = torch.eye(K, dtype=acc, device=q.device)
    transition = chunk_decay * eye - k_end_t @ W  # [n, B, H, K, K]: the chunk's product of transitions
    written = k_end_t @ U  # [n, B, H, K, V]: what the chunk adds from a zero state

    entering = []
    for A_j, B_j in zip(transition.unbind(0), written.unbind(0)):  # unbind: one gradient buffer, not n
        entering.append(S)
        S = torch.baddbmm(B_j.flatten(0, 1), A_j.flatten(0, 1), S.flatten(0, 1)).view(B, H, K, V)
    S_in = torch.stack(entering)  # [n, B, H, K, V]: the state entering each chunk
    out = q_from_start @ S_in + attn @ (U - W @ S_in)  # [n, B, H, L, V]
    out = out.permute(1, 0, 3, 2, 4).reshape(B, n * L, H, V)[:, :T]
    return out.to(q.dtype), (S if output_final_state else None)


def delta_rule(q, k, v, beta, g=None, *, scale=None, initial_state=None, output_final_state=False):
    """The delta rule in the fastest form for this device (the chunk form until a GPU kernel exists)."""
    return delta_rule_chunk(
        q, k, v, beta, g, scale=scale, initial_state=initial_state, output_final_state=output_final_state
    )
