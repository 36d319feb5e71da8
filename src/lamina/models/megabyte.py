"""MEGABYTE: a global model over patches of bytes and a local model within each patch.

Yu, Simig, Flaherty, Aghajanyan, Zettlemoyer & Lewis 2023, "MEGABYTE:
Predicting Million-byte Sequences with Multiscale Transformers", section 2.
The byte stream is cut into patches of ``P`` bytes, counted from the stream
start. For the byte at stream position ``s = kP + i`` (byte ``i`` of patch
``k``), with ``D`` the local width:

- global input of patch ``k``: the concatenation of the ``P`` global byte
  embeddings of patch ``k - 1`` (``[P·D]``; a learned padding patch for
  ``k = 0``), projected to the global width ``d_model`` (section 2.2's patch
  embedder, with its concatenation projected rather than taken as the width);
- the global model, any layer schedule (``model.layers``), reads one such
  vector per patch; its final-normed output for patch ``k`` is projected to
  ``P`` local vectors ``g_k[0..P-1]`` (``[d_model] -> [P·D]``; section 2.3's
  reshape and ``w^GL``, with one projection per position in the patch);
- local input at ``s``: ``g_k[i] + E_local(byte s - 1)``, with a learned pad
  embedding in place of the byte at ``i = 0`` (the previous patch reaches
  byte ``i = 0`` through the global model only);
- the local model, a small layer schedule (``model.megabyte.local_layers``),
  runs within each patch from the empty state; its final-normed output at
  ``s``, through a head tied to ``E_local``, is the distribution of byte ``s``.

So byte ``s`` is predicted from bytes ``< s`` alone. A causal LM's logits at
input position ``t`` predict token ``t + 1``: here they are MEGABYTE's
prediction of byte ``s = t + 1``. Byte 0 of the stream is never predicted (no
input precedes it), but its local position still runs, as the first position
of patch 0, when the stream starts.

Departures from the paper. Positions: the paper adds learned absolute position
embeddings to both levels; lamina's mixers carry their own positions (rotary
attention, recurrences) and a stream has no fixed length, so there are none.
A local attention layer's memory is set to ``P - 1`` bytes: a patch is its
whole context and a patch split across calls must still see all of it.

Streaming. A call may hold any number of bytes, and patch boundaries need not
fall on call boundaries: the state (:class:`MegabyteState`) is the global
and the local layer states, bytes read ``[B]``, the bytes of the unfinished
patch ``[B, P]`` and ``g`` of the current patch ``[B, P, D]``. The global model steps once per patch, when the last byte
of the patch before it is read; the local layers' states carry the unfinished
patch and are emptied at each patch start. One call, any split into calls and
token-by-token reading compute the same function.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lamina.config import ModelConfig
from lamina.data.tokenizers import require_bytes
from lamina.errors import LaminaError
from lamina.mixers import KVMemoryMixer
from lamina.models.lm import SequenceModel, Stack, init_linear, init_residual, memory_layers
from lamina.models.megabyte_options import MegabyteOptions


class MegabyteState(NamedTuple):
    global_layers: list  # the global model's layer states
    local_layers: list  # the local model's layer states (the unfinished patch)
    read: torch.Tensor  # [B] long: bytes read
    partial: torch.Tensor  # [B, P] long: the bytes of the unfinished patch
    current: torch.Tensor  # [B, P, D]: g of the current patch


class Megabyte(SequenceModel):
    """A MEGABYTE byte model with the :class:`~lamina.models.LM` interface (equations in the module docstring)."""

    tied_to = "local_embed"  # the output bytes are predicted by the local model

    def __init__(self, config: ModelConfig, vocab_size: int):
        super().__init__()
        mb: MegabyteOptions = config.megabyte
        if mb is None:
            raise LaminaError("Megabyte needs model.megabyte (a mapping of its options, {} for the defaults)")
        require_bytes(vocab_size, "megabyte")
        self.config = config
        self.vocab_size = vocab_size
        self.patch = P = mb.patch
        D, d = mb.local_d_model, config.d_model
        self.global_model = Stack(config.layers, config, d, "model.layers", config.mlp_hidden)
        self.local_model = Stack(mb.local_layers, config, D, "model.megabyte.local_layers", mixers=mb.local_mixers)
        for mixer in memory_layers(self.local_model.blocks):
            mixer.set_memory_length(P - 1)  # the whole patch, whatever the split into calls
        self.global_embed = nn.Embedding(vocab_size, D)
        self.global_pad = nn.Parameter(torch.empty(P, D))
        self.global_in = nn.Linear(P * D, d, bias=False)
        self.global_out = nn.Linear(d, P * D, bias=False)
        self.local_embed = nn.Embedding(vocab_size, D)
        self.local_pad = nn.Parameter(torch.empty(D))
        self.head = self.output_head(config, D, vocab_size)
        self.dropout = nn.Dropout(config.dropout)
        self.segment_memory = None
        init_linear(self)
        for pad in (self.global_pad, self.local_pad):
            nn.init.normal_(pad, mean=0.0, std=0.02)  # like the byte embeddings they stand in for
        init_residual(self.global_model.blocks)
        init_residual(self.local_model.blocks)

    # --- state API ----------------------------------------------------------------
    def init_state(self, batch: int, device=None, dtype=None) -> MegabyteState:
        P, D = self.patch, self.local_pad.shape[0]
        return MegabyteState(
            self.global_model.init_state(batch, device, dtype),
            self.local_model.init_state(batch, device, dtype),
            torch.zeros(batch, device=device, dtype=torch.long),
            torch.zeros(batch, P, device=device, dtype=torch.long),
            torch.zeros(batch, P, D, device=device, dtype=dtype or torch.float32),
        )

    def state_size(self) -> int:
        """Floats carried per sequence: both models' layer states and the current patch's ``P·D`` local vectors."""
        own = self.patch * self.local_pad.shape[0]
        return self.global_model.state_size() + self.local_model.state_size() + own

    def memory_layers(self) -> list[KVMemoryMixer]:
        """The global model's memory layers (the local ones always keep their patch)."""
        return memory_layers(self.global_model.blocks)

    # --- forward ------------------------------------------------------------------
    def forward(
        self,
        ids: torch.Tensor,
        state: MegabyteState | None = None,
        *,
        valid: torch.Tensor | None = None,
        resets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, MegabyteState]:
        """``ids [B, T]`` -> ``(logits [B, T, V], new state)``: logits at ``t`` predict byte ``t + 1``."""
        self.refuse_masks(valid, resets, "a MEGABYTE model",
                          "its patches are counted from the stream start; use model.megabyte=null")
        B, T = ids.shape
        if state is None:
            state = self.init_state(B, ids.device)
        global_states, local_states = state.global_layers, state.local_layers
        read, partial, current = state.read, state.partial, state.current
        if T == 0:
            return self._logits(current[:, :0]), state
        # The one read back to the host in a MEGABYTE call (a graph break under torch.compile): the stream
        # position decides the call's shapes (the patch it continues, the padding patch at the stream start).
        (n, ragged), P = torch.stack([read[0], (read != read[0]).any()]).tolist(), self.patch
        if ragged:
            raise LaminaError("the rows of a MEGABYTE state have read different numbers of bytes; read them in step")
        first = 0 if n == 0 else n + 1  # local positions s = n + 1 .. n + T (and s = 0 first, at the stream start)
        offset = first % P

        # global model: one step per patch that starts in this call (the padding patch first, at the stream start)
        buffer = torch.cat([partial[:, : n % P], ids], dim=1)
        complete = buffer.shape[1] // P
        patches = self.global_embed(buffer[:, : complete * P]).reshape(B, complete, P * self.global_pad.shape[1])
        if n == 0:
            patches = torch.cat([self.global_pad.reshape(1, 1, -1).expand(B, 1, -1).to(patches.dtype), patches], 1)
        g = current[:, None].to(patches.dtype) if offset else patches.new_zeros(B, 0, P, current.shape[-1])
        if patches.shape[1]:
            h, global_states = self.global_model(self.dropout(self.global_in(patches)), global_states)
            new = self.global_out(h).view(B, -1, P, current.shape[-1])
            g = torch.cat([g.to(new.dtype), new], dim=1)
        rest = buffer[:, complete * P :]
        partial = F.pad(rest, (0, P - rest.shape[1]))

        # local model
        x = self.local_embed(ids)
        if n == 0:
            x = torch.cat([x[:, :1], x], dim=1)  # position 0's byte is the pad, set below
        positions = torch.arange(first, first + x.shape[1], device=ids.device)
        x = torch.where((positions % P == 0)[None, :, None], self.local_pad.to(x.dtype), x)
        x = self.dropout(x + g.flatten(1, 2)[:, offset : offset + x.shape[1]].to(x.dtype))
        h, local_states = self._run_local(x, offset, local_states)
        logits = self._logits(h)
        if n == 0:
            logits = logits[:, 1:]
        return logits, MegabyteState(global_states, local_states, read + T, partial, g[:, -1].to(current.dtype))

    def _run_local(self, x: torch.Tensor, offset: int, states: list) -> tuple[torch.Tensor, list]:
        """Final-normed local model over ``x [B, S, D]`` from ``offset`` in a patch; the unfinished patch's state.

        The rest of a continued patch runs from the carried states; whole patches run as one batch from the empty
        state; a trailing unfinished patch runs from the empty state and leaves its states for the next call.
        """
        B, S, D = x.shape
        P, outputs = self.patch, []
        head = min(S, P - offset) if offset else 0
        if head:
            h, states = self.local_model(x[:, :head], states)
            outputs.append(h)
        full, tail = divmod(S - head, P)
        if full:
            patches = x[:, head : head + full * P].reshape(B * full, P, D)
            h, _ = self.local_model(patches, self.local_model.init_state(B * full, x.device))
            outputs.append(h.reshape(B, full * P, D))
        if tail:
            h, states = self.local_model(x[:, S - tail :], self.local_model.init_state(B, x.device))
            outputs.append(h)
        elif (offset + S) % P == 0:  # the call ends with a patch: the next one starts empty
            states = self.local_model.init_state(B, x.device)
        return torch.cat(outputs, dim=1), states

    def describe(self) -> str:
        """Both models, parameter count and state size, for printing."""
        mb = self.config.megabyte
        return "\n".join([
            f"layers {self.global_model.names()}",
            f"MEGABYTE: patches of {self.patch} bytes; global d_model {self.config.d_model}; "
            f"local model {self.local_model.names()}, d_model {mb.local_d_model}",
            f"vocab {self.vocab_size}, parameters {self.num_parameters():,}, "
            f"state {self.state_size():,} floats per sequence",
        ])
