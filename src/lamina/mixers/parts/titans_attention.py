"""What Titans' attention variants (MAG, MAC) share: persistent slots, rotary attention and the gate (a part).

Behrouz, Zhong & Mirrokni 2025, "Titans: Learning to Memorize at Test Time",
sections 4.1 and 4.2: learned persistent key/value slots every query sees,
softmax attention with rotary positions, and the output gate
``RMSNorm(y_attn) * sigmoid(RMSNorm(y_mem))`` per head (the paper's
normalisation "with learnable vector-valued weights, followed by a
non-linearity"), then ``W_out``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lamina.errors import LaminaError
from lamina.mixers.base import Mixer
from lamina.mixers.parts.neural_memory import NeuralMemoryBranch, TitansOptions
from lamina.ops.rotary import rotary


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
