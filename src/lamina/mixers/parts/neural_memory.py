"""Titans' neural long-term memory as a module: projections, gates and the memory op (a part, not a mixer).

Behrouz, Zhong & Mirrokni 2025, "Titans: Learning to Memorize at Test Time".
The memory of every Titans mixer: the paper's linear memory per head
(section 3.1) and the chunked training of section 3.2 (the op
:mod:`lamina.ops.neural_memory`). Per head, for a token ``x_t``::

    q, k, v = SiLU(x W_q), SiLU(x W_k), SiLU(x W_v);  q, k L2-normalised      (section 4.4)
    eta_t   = sigmoid(x_t w_eta + b_eta)                  momentum (decay of past surprise)
    theta_t = theta_max * sigmoid(x_t w_theta + b_theta) * (1 - eta_t)   learning rate of the surprise
    alpha_t = sigmoid(x_t w_alpha + b_alpha)              forgetting (weight decay)
    S_t = eta_t S_{t-1} - theta_t grad ||k_t M - v_t||^2  (gradient at the memory entering the chunk)
    M_t = (1 - alpha_t) M_{t-1} + S_t
    y_t = (RMSNorm(q_t M_t) * SiLU(x_t W_g)) W_out        normalisation and gating before the output (4.4)

Stability (a deviation from the paper, which leaves theta's range to
training): a gradient reaches ``M`` through the momentum with total weight
``theta / (1 - eta)``, and with keys changing direction every token the
heavy-ball recurrence diverged in our tests at ``theta = 0.1`` once ``eta``
neared 1. So ``theta`` is scaled by ``1 - eta``, making the total step of a
gradient at most ``theta_max``; and since ``||k|| = 1`` gives each token's
loss curvature 2 along ``k``, a chunk of ``b`` aligned keys steps up to ``2 b
theta_max``: the default ``theta_max = 1 / (2 b)`` keeps that at most 1.
This is not a proof; 100K-token streams with random gates stay finite.

``chunk_size`` (the paper's ``b``) is part of the function, not a speed knob:
gradients inside a chunk of ``b`` tokens are taken at the memory entering it,
with chunks counted from the stream's start; ``b = 1`` is the exact per-token
rule. The state carries ``(M, S, M_anchor, position in chunk)``
(:class:`NeuralMemoryState`), so a full
call, carried chunks of any sizes and token-by-token decoding compute the
same function, in every form.

The memory branch gives ``q_t M_t`` per head; each mixer adds its own
output path (``titans``: the normalisation and gate above, section 4.4).

Initialisation: the ``nn.Linear`` weights are the model's (N(0, 0.02), ``out``
scaled for depth). Gate biases: ``b_theta = 0`` (theta = theta_max (1 - eta) / 2),
``b_eta = 2`` (eta ~ 0.88: surprise persists over a few tokens), ``b_alpha =
-4`` (alpha ~ 0.018: the memory forgets slowly). The paper does not state
its values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lamina.errors import LaminaError
from lamina.ops.neural_memory import neural_memory, neural_memory_read, neural_memory_step


class NeuralMemoryState(NamedTuple):
    memory: torch.Tensor  # M [B, H, K, V], fp32 or wider
    momentum: torch.Tensor  # S [B, H, K, V]
    anchor: torch.Tensor  # the memory entering the current chunk [B, H, K, V]
    position: torch.Tensor  # [B, 1]: tokens into the current chunk

    def op_state(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(M, S, anchor)``, the state of the op :func:`lamina.ops.neural_memory.neural_memory`."""
        return self.memory, self.momentum, self.anchor


@dataclass
class TitansOptions:
    heads: int = 4
    head_dim: Optional[int] = None  # key and value width per head (None: d_model // heads)
    chunk_size: int = 16  # tokens whose gradients are taken at one memory (1: exact per-token updates)
    theta_max: Optional[float] = None  # the largest learning rate of the inner loop (None: 1 / (2 chunk_size))


class NeuralMemoryBranch(nn.Module):
    """Projections, gates and the memory op: ``x [B, T, d]`` -> retrieved ``o [B, T, H, V]``.

    Its state is a :class:`NeuralMemoryState`: three ``[B, H, K, V]`` and a
    ``[B, 1]`` count of tokens into the current chunk, all fp32 (or wider).
    """

    def __init__(self, d_model: int, options: TitansOptions, mixer: str):
        super().__init__()
        heads, head_dim = options.heads, options.head_dim
        if head_dim is None:
            if d_model % heads:
                raise LaminaError(f"{mixer}: d_model {d_model} does not split into {heads} heads; "
                                  "change heads or set head_dim")
            head_dim = d_model // heads
        theta_max = 0.5 / options.chunk_size if options.theta_max is None else options.theta_max
        self.heads, self.head_dim, self.chunk_size, self.theta_max = heads, head_dim, options.chunk_size, theta_max
        self.qkv = nn.Linear(d_model, 3 * heads * head_dim, bias=False)
        self.gates = nn.Linear(d_model, 3 * heads, bias=False)  # theta, eta, alpha per head
        self.gate_bias = nn.Parameter(torch.empty(3, heads))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.gate_bias.copy_(torch.tensor([0.0, 2.0, -4.0])[:, None].expand(3, self.heads))

    def init_state(self, batch: int, device=None, dtype=None) -> NeuralMemoryState:
        dtype = torch.promote_types(dtype or torch.float32, torch.float32)
        shape = (batch, self.heads, self.head_dim, self.head_dim)
        return NeuralMemoryState(*(torch.zeros(shape, device=device, dtype=dtype) for _ in range(3)),
                                 torch.zeros(batch, 1, device=device, dtype=dtype))

    def state_size(self) -> int:
        return 3 * self.heads * self.head_dim**2 + 1

    def _inputs(self, x: torch.Tensor):
        acc = torch.promote_types(x.dtype, torch.float32)
        q, k, v = F.silu(self.qkv(x)).unflatten(-1, (3, self.heads, self.head_dim)).unbind(-3)
        q = F.normalize(q.to(acc), dim=-1, eps=1e-6)
        k = F.normalize(k.to(acc), dim=-1, eps=1e-6)
        z = (self.gates(x).to(acc).unflatten(-1, (3, self.heads)) + self.gate_bias.to(acc)).unbind(-2)
        log_eta, log_keep = F.logsigmoid(z[1]), F.logsigmoid(-z[2])  # log eta, log(1 - alpha)
        theta = self.theta_max * torch.sigmoid(z[0]) * torch.sigmoid(-z[1])  # ... * (1 - eta)
        return q, k, v, theta, log_eta, log_keep

    def read(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """``q(x) memory`` for ``x [B, T, d]`` and ``memory [B, H, K, V]``: a retrieval that writes nothing."""
        q = F.silu(F.linear(x, self.qkv.weight[: self.heads * self.head_dim])).unflatten(-1, (self.heads, -1))
        q = F.normalize(q.to(torch.promote_types(q.dtype, memory.dtype)), dim=-1, eps=1e-6)
        return neural_memory_read(q, memory)

    def forward(self, x: torch.Tensor, state: NeuralMemoryState) -> tuple[torch.Tensor, NeuralMemoryState]:
        pos = state.position
        o, memory = neural_memory(*self._inputs(x), chunk_size=self.chunk_size, initial_state=state.op_state(),
                                  offset=pos[:, 0].round().long(), output_final_state=True)
        return o, NeuralMemoryState(*memory, torch.remainder(pos + x.shape[1], self.chunk_size))

    def step(self, x_t: torch.Tensor, state: NeuralMemoryState) -> tuple[torch.Tensor, NeuralMemoryState]:
        pos = torch.remainder(state.position + 1, self.chunk_size)
        o, memory = neural_memory_step(*self._inputs(x_t), state.op_state(), pos[:, 0] == 0)
        return o, NeuralMemoryState(*memory, pos)
