"""The one generic language model, built from a layer schedule.

``embedding -> [pre-norm block] * L -> RMSNorm -> tied output head``, where a
block is ``x + mixer(norm(x), state)`` followed by ``x + SwiGLU(norm(x))``
(the LLaMA block shape, with any registered mixer in the attention slot).

Initialisation (GPT-2, Radford et al. 2019, section 2.3): every ``nn.Linear``
and the embedding start from N(0, 0.02) with zero biases; the projections
that write into the residual stream (the MLP's down projection and each
mixer's ``out``, when it has one) are scaled by 1/sqrt(2L). Modules that are
not linear layers (cuDNN RNNs, norms) keep PyTorch's defaults; a mixer with a
paper-specific initialisation defines ``reset_parameters()``, called last.
"""

from __future__ import annotations

import abc
import math
from contextlib import ExitStack, contextmanager
from typing import Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lamina.config import ModelConfig
from lamina.errors import LaminaError
from lamina.mixers import KVMemoryMixer, Mixer, mixer_class
from lamina.models.hmt import HierarchicalMemory
from lamina.models.memory_tokens import MemoryTokens
from lamina.models.segments import SegmentMemory
from lamina.models.schedule import LayerSpec, parse_layers


def mlp_hidden_size(d_model: int, requested: int | None) -> int:
    """SwiGLU width: 8/3 of d_model (same parameters as a 4x GELU MLP), rounded up to 64."""
    if requested:
        return requested
    return 64 * math.ceil(8 * d_model / 3 / 64)


class SwiGLU(nn.Module):
    """Shazeer 2020, "GLU Variants Improve Transformer": down(silu(gate(x)) * up(x))."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, mixer: Mixer, d_model: int, mlp_hidden: int, dropout: float, eps: float):
        super().__init__()
        self.mixer_norm = nn.RMSNorm(d_model, eps=eps)
        self.mixer = mixer
        self.mlp_norm = nn.RMSNorm(d_model, eps=eps)
        self.mlp = SwiGLU(d_model, mlp_hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, state, **masks):
        h, state = self.mixer(self.mixer_norm(x), state, **masks)
        x = x + self.dropout(h)
        x = x + self.dropout(self.mlp(self.mlp_norm(x)))
        return x, state


def build_blocks(
    specs: list[LayerSpec], d_model: int, mlp_hidden: int, config: ModelConfig
) -> tuple[nn.ModuleList, nn.ParameterDict]:
    """One block per layer spec at width ``d_model``, and the parameters their mixers share (bound to them)."""
    n_layers = len(specs)
    blocks = nn.ModuleList(
        Block(mixer_class(s.name)(d_model, s.options, i, n_layers), d_model, mlp_hidden, config.dropout,
              config.norm_eps)
        for i, s in enumerate(specs)
    )
    shared = nn.ParameterDict()
    for block in blocks:
        for name, init in type(block.mixer).shared_parameters.items():
            if name not in shared:
                shared[name] = nn.Parameter(init(n_layers, d_model))
        block.mixer.bind_shared(shared)
    return blocks, shared


def init_linear(module: nn.Module) -> None:
    """Every linear layer and embedding inside ``module``: N(0, 0.02) weights, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)


def init_residual(blocks: nn.ModuleList) -> None:
    """After :func:`init_linear`: residual-writing projections at 0.02/sqrt(2L), then each mixer's own init."""
    residual_std = 0.02 / math.sqrt(2 * len(blocks))
    for block in blocks:
        nn.init.normal_(block.mlp.down.weight, mean=0.0, std=residual_std)
        for projection in block.mixer.residual_projections():
            nn.init.normal_(projection.weight, mean=0.0, std=residual_std)
        block.mixer.reset_parameters()


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, state: list, masks: dict) -> tuple[torch.Tensor, list]:
    """``x`` through ``blocks`` with one state per block -> ``(output, new states)``."""
    new_state = []
    for block, layer_state in zip(blocks, state):
        x, layer_state = block(x, layer_state, **masks)
        new_state.append(layer_state)
    return x, new_state


def memory_layers(blocks: nn.ModuleList) -> list[KVMemoryMixer]:
    """The layers whose state is a memory of ``mem_len`` past positions (attention)."""
    return [b.mixer for b in blocks if isinstance(b.mixer, KVMemoryMixer)]


@contextmanager
def memory_lengths(layers: list[KVMemoryMixer], mem_len: int | None = None, extra: int = 0) -> Iterator[None]:
    """Inside this block, memory ``layers`` keep ``mem_len`` positions (or their own) plus ``extra``."""
    with ExitStack() as stack:
        for layer in layers:
            stack.enter_context(layer.memory_length(mem_len, extra))
        yield


def forget_widening(blocks: nn.ModuleList, states: list) -> list:
    """The layer states at a segment's start, each memory layer widened by :func:`memory_lengths`' ``extra``
    cut back to its own memory: decoding a segment model token by token then shows every position of a
    segment exactly what the segment-by-segment call shows it (the widening only holds the segment's own run)."""
    return [b.mixer.trim_state(s) if isinstance(b.mixer, KVMemoryMixer) else s for b, s in zip(blocks, states)]


class Stack(nn.Module):
    """A layer schedule's pre-norm blocks and a final RMSNorm: the body of :class:`LM`, as a part of a larger model.

    ``layers`` is the schedule found at config key ``where``; ``mixers`` its default options per mixer name
    (``config.mixers`` unless given). The byte models (HAT, MEGABYTE) are built from several.
    """

    def __init__(
        self, layers, config: ModelConfig, d_model: int, where: str, mlp_hidden: int | None = None,
        mixers: dict | None = None,
    ):
        super().__init__()
        self.specs = parse_layers(layers, config.mixers if mixers is None else mixers, where)
        self.blocks, self.shared = build_blocks(self.specs, d_model, mlp_hidden_size(d_model, mlp_hidden), config)
        self.norm = nn.RMSNorm(d_model, eps=config.norm_eps)

    def init_state(self, batch: int, device=None, dtype=None) -> list:
        return [block.mixer.init_state(batch, device, dtype) for block in self.blocks]

    def state_size(self) -> int:
        return sum(block.mixer.state_size() for block in self.blocks)

    def forward(self, x: torch.Tensor, state: list, masks: dict | None = None) -> tuple[torch.Tensor, list]:
        h, state = run_blocks(self.blocks, x, state, masks or {})
        return self.norm(h), state

    def names(self) -> str:
        return f"({len(self.specs)}): {', '.join(s.name for s in self.specs)}"


def segment_memory(config: ModelConfig, d_model: int) -> SegmentMemory | None:
    """The segment memory ``config`` asks for, if any (the config allows one at most)."""
    if config.hmt is not None:
        return HierarchicalMemory(config.hmt, d_model)
    if config.memory_tokens:
        return MemoryTokens(config.memory_tokens, d_model, config.memory_segment)
    return None


class SegmentLMState(NamedTuple):
    """The state of an :class:`LM` with a segment memory."""

    memory: tuple  # the segment memory's state (:mod:`lamina.models.segments`)
    layers: list  # one state per layer


class SequenceModel(nn.Module, abc.ABC):
    """What every lamina model offers beside ``forward(ids, state) -> (logits, state)`` and its state methods.

    A subclass lists its attention-like layers in :meth:`memory_layers`; the
    trainer, evaluation and generation then change their memory through
    :meth:`memory` without knowing the model's structure.
    """

    segment_memory: SegmentMemory | None  # a model-level memory read and written around segments (None: none)

    @abc.abstractmethod
    def memory_layers(self) -> list[KVMemoryMixer]:
        """The layers whose state is a memory of ``mem_len`` past positions (attention)."""

    def memory(self, mem_len: int | None = None, extra: int = 0):
        """Inside this block, memory layers keep ``mem_len`` positions (or their own plus ``extra``).

        Evaluation uses it to read with a longer memory than training;
        generation to let new tokens see as far back as training did.
        """
        return memory_lengths(self.memory_layers(), mem_len, extra)

    tied_to = "embed"  # the input embedding the output head shares its weights with, when tied

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @staticmethod
    def output_head(config: ModelConfig, width: int, vocab_size: int) -> nn.Linear | None:
        """The untied output projection, or None when ``config.tie_embeddings`` (see :meth:`_logits`)."""
        return None if config.tie_embeddings else nn.Linear(width, vocab_size, bias=False)

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        """Next-token logits of final hidden states: the head, or the transposed embedding ``tied_to``."""
        return self.head(h) if self.head is not None else F.linear(h, getattr(self, self.tied_to).weight)

    @staticmethod
    def refuse_masks(valid: torch.Tensor | None, resets: torch.Tensor | None, what: str, why: str) -> None:
        """A model that cuts its own units from the stream takes no padding or reset masks: a LaminaError if given."""
        if valid is not None or resets is not None:
            raise LaminaError(f"{what} does not take padding or reset masks: {why}")


class LM(SequenceModel):
    """A causal LM over token ids whose state is the list of its layers' states.

    With a segment memory (:mod:`lamina.models.segments`) it is a Recurrent
    Memory Transformer (``config.memory_tokens = m > 0``, see
    :mod:`lamina.models.memory_tokens`) or a Hierarchical Memory Transformer
    (``config.hmt``, see :mod:`lamina.models.hmt`): the ids are read in
    segments, each run as ``[read; tokens; write]`` through the same blocks,
    and the state is a :class:`SegmentLMState`. A call may hold any
    number of tokens: pieces of a segment accumulate in the layers' states
    until it completes, then the write embeddings run.
    """

    def __init__(self, config: ModelConfig, vocab_size: int):
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.specs: list[LayerSpec] = parse_layers(config.layers, config.mixers)
        d = config.d_model
        self.embed = nn.Embedding(vocab_size, d)
        self.embed_dropout = nn.Dropout(config.dropout)
        self.blocks, self.shared = build_blocks(self.specs, d, mlp_hidden_size(d, config.mlp_hidden), config)
        self.norm = nn.RMSNorm(d, eps=config.norm_eps)
        self.segment_memory = segment_memory(config, d)
        self.head = self.output_head(config, d, vocab_size)
        init_linear(self)
        init_residual(self.blocks)

    # --- state API ----------------------------------------------------------------
    def init_state(self, batch: int, device=None, dtype=None) -> list:
        layers = self._layer_states(batch, device, dtype)
        if self.segment_memory is None:
            return layers
        return SegmentLMState(self.segment_memory.init_state(batch, device), layers)

    def _layer_states(self, batch: int, device=None, dtype=None) -> list:
        return [block.mixer.init_state(batch, device, dtype) for block in self.blocks]

    def state_size(self) -> int:
        """Floats carried per sequence between tokens, summed over layers (and the segment memory)."""
        size = sum(block.mixer.state_size() for block in self.blocks)
        return size + (self.segment_memory.state_size() if self.segment_memory is not None else 0)

    def memory_layers(self) -> list[KVMemoryMixer]:
        return memory_layers(self.blocks)

    # --- forward ------------------------------------------------------------------
    def forward(
        self,
        ids: torch.Tensor,
        state: list | None = None,
        *,
        valid: torch.Tensor | None = None,
        resets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list]:
        """``ids [B, T]`` -> ``(logits [B, T, V], new state)``.

        ``valid`` and ``resets`` (``[B, T]`` bool) mark padding and document
        starts for every layer (see :meth:`lamina.mixers.Mixer.forward`).
        """
        if state is None:
            state = self.init_state(ids.shape[0], ids.device)
        masks = {k: v for k, v in (("valid", valid), ("resets", resets)) if v is not None}
        x = self.embed_tokens(ids)
        if self.segment_memory is not None:
            self.refuse_masks(valid, resets, f"a model with {self.segment_memory.name}",
                              f"its memory is read and written per whole segment; use {self.segment_memory.off}")
            return self._forward_segments(ids, x, state)
        x, new_state = self._run_blocks(x, state, masks)
        return self._logits(self.norm(x)), new_state

    def _run_blocks(self, x: torch.Tensor, state: list, masks: dict) -> tuple[torch.Tensor, list]:
        return run_blocks(self.blocks, x, state, masks)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of token ids (with embedding dropout)."""
        return self.embed_dropout(self.embed(ids))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Final hidden states (after the final norm) of input embeddings ``x`` read from the empty layer state."""
        h, _ = self._run_blocks(x, self._layer_states(x.shape[0], x.device), {})
        return self.norm(h)

    def _forward_segments(
        self, ids: torch.Tensor, x: torch.Tensor, state: SegmentLMState
    ) -> tuple[torch.Tensor, SegmentLMState]:
        """Token embeddings ``x`` read segment by segment between the segment memory's read and write embeddings."""
        memory_state, layer_states = state.memory, state.layers
        mem = self.segment_memory
        logits = []
        for start, stop, read, write in mem.plan(mem.position(memory_state), x.shape[1]):
            n = stop - start
            if read:
                layer_states = forget_widening(self.blocks, layer_states)
            prefix, valid = mem.read(memory_state, self) if read else (x[:, :0], None)
            suffix = mem.write(memory_state).to(x.dtype) if write else x[:, :0]
            masks = {}
            if valid is not None:  # some rows read fewer embeddings: the rest of their prefix is padding
                masks["valid"] = torch.cat([valid, valid.new_ones(valid.shape[0], n + suffix.shape[1])], dim=1)
            parts = torch.cat([prefix.to(x.dtype), x[:, start:stop], suffix], dim=1)
            h, layer_states = self._run_blocks(parts, layer_states, masks)
            h = self.norm(h)
            first = prefix.shape[1]
            logits.append(self._logits(h[:, first : first + n]))
            written = h[:, first + n :] if write else None
            memory_state = mem.advance(memory_state, ids[:, start:stop], written, self)
        if not logits:  # no tokens
            logits.append(self._logits(x))
        return torch.cat(logits, dim=1), SegmentLMState(memory_state, layer_states)

    def describe(self) -> str:
        """Architecture, parameter count and state size, for printing."""
        names = [s.name for s in self.specs]
        lines = [
            f"layers ({len(names)}): {', '.join(names)}",
            f"d_model {self.config.d_model}, vocab {self.vocab_size}, "
            f"parameters {self.num_parameters():,}, state {self.state_size():,} floats per sequence",
        ]
        if self.segment_memory is not None:
            lines.append(self.segment_memory.describe())
        return "\n".join(lines)
