"""The Forgetting Transformer (FoX; Lin et al. 2025, "Forgetting Transformer:
Softmax Attention with a Forget Gate").

Causal softmax attention whose logits get the log forget gates summed between
key and query (section 3, "Forgetting Attention"):
``score_ij = q_i . k_j / sqrt(d) + sum_{j < l <= i} log f_l`` with a scalar
gate per head and token ``f_t = sigmoid(w_f . x_t + b_f)``. The gate is a
data-dependent recency bias, so no position embedding is used (section 3).
The bias matrix comes from :func:`lamina.ops.decay_bias.forget_bias` (each span
summed on its own, exact in fp32) and goes to
``scaled_dot_product_attention`` as a float mask.

The state is a key/value memory of the last ``mem_len`` tokens as in
:mod:`lamina.mixers.attn`, plus for each memory key the sum of ``log f`` from
it to the segment boundary, so the bias to memory keys is exact across
segments: with ``mem_len`` covering the history (or ``window - 1``), chunked
and token-by-token runs equal the full one. The bias is made in fp32 and
given to the attention kernel in the queries' dtype (bf16 under autocast),
like the logits it is added to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lamina.errors import LaminaError
from lamina.mixers.kv_memory import KVMemoryMixer
from lamina.mixers.registry import register
from lamina.ops import kv_memory
from lamina.ops.decay_bias import forget_bias
from lamina.ops.gates import log_sigmoid


class FoxState(NamedTuple):
    keys: torch.Tensor  # [B, M, H, D]
    values: torch.Tensor  # [B, M, H, D]
    decay: torch.Tensor  # log decay of each key to the memory's boundary [B, M, H], fp32
    valid: torch.Tensor  # [B, M] bool, newest last


@dataclass
class FoxOptions:
    heads: int = 4
    mem_len: int = 0  # keys/values carried across segments (0: none)
    window: Optional[int] = None  # sliding-window size including the query itself (None: unlimited)


@register("fox")
class ForgettingAttention(KVMemoryMixer):
    Options = FoxOptions
    forms = ("recurrent", "parallel")

    def __init__(self, d_model: int, options: FoxOptions, layer_idx: int = 0, n_layers: int = 1):
        super().__init__(d_model, options, layer_idx, n_layers)
        if d_model % options.heads:
            raise LaminaError(
                f"fox: d_model {d_model} must split into heads = {options.heads} equal heads; "
                "change model.d_model or the heads option"
            )
        self.heads = options.heads
        self.head_dim = d_model // options.heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.fgate = nn.Linear(d_model, options.heads)  # w_f, b_f of every head
        self.out = nn.Linear(d_model, d_model, bias=False)

    def init_state(self, batch: int, device=None, dtype=None) -> FoxState:
        """Keys, values ``[B, M, H, D]``, log decay to the boundary ``[B, M, H]`` (fp32) and validity ``[B, M]``."""
        shape = (batch, self.mem_len, self.heads, self.head_dim)
        zeros = torch.zeros(shape, device=device, dtype=torch.float32)
        decay = torch.zeros(batch, self.mem_len, self.heads, device=device, dtype=torch.float32)
        return FoxState(zeros, zeros.clone(), decay, torch.zeros(batch, self.mem_len, device=device, dtype=torch.bool))

    def state_size(self) -> int:
        return self.mem_len * (2 * self.d_model + self.heads)

    def forward_parallel(self, x: torch.Tensor, state: FoxState) -> tuple[torch.Tensor, FoxState]:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.head_dim).unbind(2)
        log_f = log_sigmoid(self.fgate(x).float())  # [B, T, H]
        k_mem, v_mem, decay_mem, valid_mem = state.keys, state.values, state.decay, state.valid
        if k_mem.shape[1] != self.mem_len:
            raise ValueError(f"fox state holds {k_mem.shape[1]} tokens but mem_len is {self.mem_len}")
        (k_all, v_all), valid = kv_memory.extend((k_mem, v_mem), (k, v), valid_mem)
        bias = forget_bias(log_f, decay_mem)  # [B, H, T, M + T]
        allowed = kv_memory.causal_mask(valid, T, self.options.window)
        mask = bias.masked_fill(~allowed, float("-inf")).to(q.dtype)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k_all.transpose(1, 2), v_all.transpose(1, 2), attn_mask=mask)
        y = self.out(y.transpose(1, 2).reshape(B, T, self.d_model))
        # the last query's bias to each key is that key's log decay up to the new boundary
        decay_all = bias[:, :, -1].transpose(1, 2).masked_fill(~valid[..., None], 0.0)
        return y, FoxState._make(kv_memory.keep_last(state, (k_all, v_all, decay_all, valid)))

    def step(self, x: torch.Tensor, state: FoxState) -> tuple[torch.Tensor, FoxState]:
        y, state = self.forward_parallel(x[:, None], state)
        return y[:, 0], state
