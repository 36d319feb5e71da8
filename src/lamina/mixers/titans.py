"""Titans: a neural long-term memory learned at test time, as a layer (``titans``) and as a gate (``titans_mag``).

Behrouz, Zhong & Mirrokni 2025, "Titans: Learning to Memorize at Test Time".
``titans`` is the memory as a layer (MAL, section 4.3) with the paper's
linear memory per head (section 3.1) and the chunked training of section 3.2
(the op :mod:`lamina.ops.neural_memory`). Per head, for a token ``x_t``::

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
rule. The state carries ``(M, S, M_anchor, position in chunk)``, so a full
call, carried chunks of any sizes and token-by-token decoding compute the
same function, in every form.

``titans_mag`` is the memory as a gate (MAG, section 4.2): a sliding-window
attention branch over ``persistent`` learned key/value slots (always
visible) and the last ``window`` tokens (rotary positions), and the same
memory branch, combined per head as ``RMSNorm(y_attn) * sigmoid(RMSNorm(y_mem))``
(the paper's normalisation "with learnable vector-valued weights, followed by
a non-linearity"), then ``W_out``. Its state adds the keys and values of the
last ``window - 1`` tokens, so carried chunks equal the full run. The
persistent tokens enter the attention only (the paper also feeds them to the
memory at the sequence's start).

``titans_mac``, the memory as context (section 4.1), lives in
:mod:`lamina.mixers.titans_mac`; it shares ``NeuralMemoryBranch`` and, with
MAG, ``TitansAttention`` (the persistent slots, rotary attention and gate).

Left out: the paper's short depthwise convolutions after q, k, v, its deep
(MLP) memory, and persistent memory tokens for MAL.

Initialisation: the ``nn.Linear`` weights are the model's (N(0, 0.02), ``out``
scaled for depth). Gate biases: ``b_theta = 0`` (theta = theta_max (1 - eta) / 2),
``b_eta = 2`` (eta ~ 0.88: surprise persists over a few tokens), ``b_alpha =
-4`` (alpha ~ 0.018: the memory forgets slowly). The paper does not state
its values.
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
from lamina.ops.neural_memory import neural_memory, neural_memory_read, neural_memory_step
from lamina.ops.rotary import rotary


@dataclass
class TitansOptions:
    heads: int = 4
    head_dim: Optional[int] = None  # key and value width per head (None: d_model // heads)
    chunk_size: int = 16  # tokens whose gradients are taken at one memory (1: exact per-token updates)
    theta_max: Optional[float] = None  # the largest learning rate of the inner loop (None: 1 / (2 chunk_size))


class NeuralMemoryBranch(nn.Module):
    """Projections, gates and the memory op: ``x [B, T, d]`` -> retrieved ``o [B, T, H, V]`` (a helper, not a mixer).

    Its state is ``(M, S, anchor, position)``: three ``[B, H, K, V]`` and a
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

    def init_state(self, batch: int, device=None, dtype=None) -> State:
        dtype = torch.promote_types(dtype or torch.float32, torch.float32)
        shape = (batch, self.heads, self.head_dim, self.head_dim)
        return (*(torch.zeros(shape, device=device, dtype=dtype) for _ in range(3)),
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

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        pos = state[3]
        o, memory = neural_memory(*self._inputs(x), chunk_size=self.chunk_size, initial_state=state[:3],
                                  offset=pos[:, 0].round().long(), output_final_state=True)
        return o, (*memory, torch.remainder(pos + x.shape[1], self.chunk_size))

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        pos = torch.remainder(state[3] + 1, self.chunk_size)
        o, memory = neural_memory_step(*self._inputs(x_t), state[:3], pos[:, 0] == 0)
        return o, (*memory, pos)


@register("titans")
class Titans(Mixer):
    """Titans' neural memory as a layer (MAL, section 4.3), with a linear memory per head."""

    Options = TitansOptions
    forms = ("recurrent", "chunk")

    def __init__(self, d_model: int, options: TitansOptions, layer_idx: int = 0, n_layers: int = 1):
        super().__init__(d_model, options, layer_idx, n_layers)
        self.memory = NeuralMemoryBranch(d_model, options, self.name)
        H, V = self.memory.heads, self.memory.head_dim
        self.norm = nn.RMSNorm(V, eps=1e-5)
        self.g_proj = nn.Linear(d_model, H * V, bias=False)
        self.out = nn.Linear(H * V, d_model, bias=False)

    def reset_parameters(self) -> None:
        self.memory.reset_parameters()

    def init_state(self, batch: int, device=None, dtype=None) -> State:
        return self.memory.init_state(batch, device, dtype)

    def state_size(self) -> int:
        """``3 H K^2 + 1``: the memory, its momentum, the memory entering the chunk, and the position in it."""
        return self.memory.state_size()

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        o = self.norm(o.to(x.dtype)) * F.silu(self.g_proj(x)).unflatten(-1, (self.memory.heads, -1))
        return self.out(o.flatten(-2))

    def forward_chunk(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        o, state = self.memory(x, state)
        return self._output(o, x), state

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        o, state = self.memory.step(x_t, state)
        return self._output(o, x_t), state


@dataclass
class TitansMAGOptions(TitansOptions):
    window: int = 64  # sliding-window attention: each query sees the last `window` tokens (itself included)
    persistent: int = 4  # learned key/value slots every query sees (the paper's persistent memory)
    rope_base: float = 10000.0


class TitansAttention(Mixer):
    """What MAG and MAC share (a base class, not a registered mixer): the memory branch, attention over
    ``persistent`` learned key/value slots and rotary-positioned keys, and the gate combining them.

    Persistent keys and values are initialised N(0, 0.02), like the model's linear layers. Subclasses
    define ``Options`` with ``persistent`` and ``rope_base`` and pass the memory's options.
    """

    def __init__(self, d_model: int, options, layer_idx: int, n_layers: int, memory_options: TitansOptions):
        super().__init__(d_model, options, layer_idx, n_layers)
        self.memory = NeuralMemoryBranch(d_model, memory_options, self.name)
        H, K = self.memory.heads, self.memory.head_dim
        if K % 2:
            raise LaminaError(f"{self.name}: the head width {K} must be even for rotary positions; "
                              "change heads or head_dim")
        self.qkv = nn.Linear(d_model, 3 * H * K, bias=False)
        self.persistent_kv = nn.Parameter(torch.empty(2, options.persistent, H, K))
        self.attn_norm = nn.RMSNorm(K, eps=1e-5)
        self.mem_norm = nn.RMSNorm(K, eps=1e-5)
        self.out = nn.Linear(H * K, d_model, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.memory.reset_parameters()
        nn.init.normal_(self.persistent_kv, std=0.02)

    def _attention(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, q_positions: torch.Tensor,
                   k_positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Softmax attention of ``q [B, T, H, K]`` over the persistent slots (always visible, no position)
        and ``keys, values [B, N, H, K]`` under ``mask [B, 1, T, N]``, rotary positions ``[T]`` and ``[N]``.
        """
        B, _, H, K = q.shape
        P, base = self.options.persistent, self.options.rope_base
        # persistent keys carry no position: their scores use the unrotated query, in a second half of
        # the head width (zeros elsewhere), so one attention call covers both kinds of key
        pk, pv = (t.to(q.dtype)[None].expand(B, P, H, K) for t in self.persistent_kv)
        keys = rotary(keys, k_positions, base)
        keys = torch.cat([torch.cat([torch.zeros_like(pk), pk], -1), torch.cat([keys, torch.zeros_like(keys)], -1)], 1)
        queries = torch.cat([rotary(q, q_positions, base), q], -1)
        values = torch.cat([pv, values], 1)
        mask = torch.cat([mask.new_ones(B, 1, q.shape[1], P), mask], -1)
        y = F.scaled_dot_product_attention(queries.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2),
                                           attn_mask=mask, scale=K**-0.5)
        return y.transpose(1, 2)

    def _combine(self, y_attn: torch.Tensor, y_mem: torch.Tensor) -> torch.Tensor:
        """``RMSNorm(y_attn) * sigmoid(RMSNorm(y_mem))`` per head, then ``W_out`` (the paper's gate, section 4.2)."""
        dtype = self.attn_norm.weight.dtype  # the norms run in their weights' dtype (fp32 under autocast)
        o = self.attn_norm(y_attn.to(dtype)) * torch.sigmoid(self.mem_norm(y_mem.to(dtype)))
        return self.out(o.flatten(-2))


@register("titans_mag")
class TitansMAG(TitansAttention):
    """Titans' memory as a gate on sliding-window attention (MAG, section 4.2)."""

    Options = TitansMAGOptions
    forms = ("recurrent", "chunk")

    def __init__(self, d_model: int, options: TitansMAGOptions, layer_idx: int = 0, n_layers: int = 1):
        super().__init__(d_model, options, layer_idx, n_layers, options)

    def init_state(self, batch: int, device=None, dtype=None) -> State:
        """The memory branch's state, then keys, values ``[B, window - 1, H, K]`` and their validity."""
        dtype = torch.promote_types(dtype or torch.float32, torch.float32)
        shape = (batch, self.options.window - 1, self.memory.heads, self.memory.head_dim)
        kv = (torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype),
              torch.zeros(shape[:2], device=device, dtype=torch.bool))
        return self.memory.init_state(batch, device, dtype) + kv

    def state_size(self) -> int:
        """``3 H K^2 + 1`` for the memory, ``2 (window - 1) H K`` for the window's keys and values."""
        H, K = self.memory.heads, self.memory.head_dim
        return self.memory.state_size() + 2 * (self.options.window - 1) * H * K

    def _attend(self, x: torch.Tensor, window_state: State) -> tuple[torch.Tensor, State]:
        """Sliding-window attention with persistent slots: ``[B, T, H, K]`` and the new window state."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.memory.heads, self.memory.head_dim).unbind(2)
        (k_all, v_all), valid = kv_memory.extend(window_state[:2], (k, v), window_state[2])
        M = k_all.shape[1] - T
        positions = torch.arange(M + T, device=x.device)
        y = self._attention(q, k_all, v_all, positions[M:], positions,
                            kv_memory.causal_mask(valid, T, self.options.window))
        return y, kv_memory.keep_last(window_state, (k_all, v_all, valid))

    def forward_chunk(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        y_mem, memory = self.memory(x, state[:4])
        y_attn, window = self._attend(x, state[4:])
        return self._combine(y_attn, y_mem), memory + window

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        y_mem, memory = self.memory.step(x_t, state[:4])
        y_attn, window = self._attend(x_t[:, None], state[4:])
        return self._combine(y_attn[:, 0], y_mem), memory + window
