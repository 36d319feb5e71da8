"""Infini-attention's compressive memory (Munkhdalai et al. 2024, section 2.1.2).

Per head a memory ``M [K, V]`` and a normaliser ``z [K]``, written and read
with linear attention on ``sigma(x) = elu(x) + 1``. A whole segment reads the
memory as it was before the segment,

    A_mem = sigma(Q) M / (sigma(Q) z),

and then (:func:`compressive_memory`; :func:`read_memory` reads only) writes
all its keys and values at once, either with the linear rule
``M += sigma(K)^T V`` or the delta rule
``M += sigma(K)^T (V - sigma(K) M / (sigma(K) z))``; both add ``sum_t sigma(K_t)``
to ``z``. An empty memory (``z = 0``, the only way ``sigma(.) z`` can be 0
since ``sigma > 0``) reads as zeros.

Layout ``q, k [B, T, H, K]``, ``v [B, T, H, V]``, memory ``[B, H, K, V]`` and
``[B, H, K]``, accumulated in fp32 (float64 stays float64), also under autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lamina.ops.precision import acc_dtype, outside_autocast

UPDATES = ("linear", "delta")


def elu_plus_one(x: torch.Tensor) -> torch.Tensor:
    """``sigma(x) = elu(x) + 1 > 0``, the paper's (and Katharopoulos et al.'s) feature map."""
    return F.elu(x) + 1


def _read(phi: torch.Tensor, memory: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """``phi M / (phi z)`` per head, zeros where the memory is empty (no 0/0, no NaN gradient)."""
    num = torch.einsum("bthk,bhkv->bthv", phi, memory)
    den = torch.einsum("bthk,bhk->bth", phi, norm)[..., None]
    filled = den > 0
    return torch.where(filled, num / torch.where(filled, den, torch.ones_like(den)), torch.zeros_like(num))


@outside_autocast
def read_memory(q: torch.Tensor, memory: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """``A_mem [B, T, H, V]`` in q's dtype, without a write (tokens of a segment that is not complete yet)."""
    dtype = acc_dtype(q, memory)
    return _read(elu_plus_one(q.to(dtype)), memory.to(dtype), norm.to(dtype)).to(q.dtype)


@outside_autocast
def compressive_memory(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    memory: torch.Tensor,
    norm: torch.Tensor,
    update: str = "linear",
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """One segment: ``(A_mem [B, T, H, V] in q's dtype, (new memory, new normaliser))``.

    ``q``, ``k`` are the raw queries and keys (``sigma`` is applied here);
    the queries may be other tokens than the keys and values (``[B, T', H, K]``).
    """
    if update not in UPDATES:
        raise ValueError(f"update must be one of {UPDATES}, got {update!r}")
    dtype = acc_dtype(q, memory)
    out = read_memory(q, memory, norm)
    sk, v = elu_plus_one(k.to(dtype)), v.to(dtype)
    memory, norm = memory.to(dtype), norm.to(dtype)
    if update == "delta":
        v = v - _read(sk, memory, norm)
    new_memory = memory + torch.einsum("bthk,bthv->bhkv", sk, v)
    new_norm = norm + sk.sum(1)
    return out, (new_memory, new_norm)
