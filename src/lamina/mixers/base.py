"""The state API that every token mixer implements: the base class :class:`Mixer`.

A mixer maps ``(x, state) -> (y, state')`` with ``x`` and ``y`` of shape
``[B, T, d_model]``. A state is a named tuple of tensors whose first dimension
is the batch (:mod:`lamina.mixers.state`); it is fixed in shape for the
mixer's life, so it can be reset per sequence, detached between segments and
saved in a checkpoint without knowing what is inside. Zeros everywhere is the
empty state.

Mixers are token-level recurrences: any split of a sequence into calls with
carried state computes the same function as one call (attention with a
bounded memory: while the memory covers the calls), so a model trains on
segments and generates token by token as one function. Mixers built on fixed
segments of the stream (Infini-attention, the Block-Recurrent Transformer)
count their segments from the empty state and carry the unfinished segment
in their state (:class:`lamina.ops.segments.Segments`).

A mixer whose state is a memory of past positions' keys and values
(attention) is a :class:`lamina.mixers.kv_memory.KVMemoryMixer`: models,
generation and evaluation change its memory only through that declared
interface.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Callable, ClassVar

import torch
from torch import nn

from lamina.config import check_values
from lamina.errors import LaminaError
from lamina.mixers.forms import choose_form
from lamina.mixers.masks import run_masked
from lamina.mixers.state import State, state_tensors

class Mixer(nn.Module, abc.ABC):
    """Base class: subclasses set ``forms`` and implement the ``forward_<form>`` they offer.

    ``forward_recurrent`` defaults to a loop over :meth:`step`, so a mixer that
    defines ``step`` gets its token-by-token form for free.
    """

    forms: ClassVar[tuple[str, ...]] = ("recurrent",)
    Options: ClassVar[type] = None  # a dataclass of the mixer's options
    # Parameters shared by every layer of this mixer in a model (name -> init(n_layers, d_model)).
    shared_parameters: ClassVar[dict[str, Callable[[int, int], torch.Tensor]]] = {}
    # torch._dynamo.config settings that torch.compile needs to trace this mixer without a graph break
    # (applied by lamina.models.compile_model)
    dynamo_config: ClassVar[dict[str, object]] = {}

    def __init__(self, d_model: int, options, layer_idx: int = 0, n_layers: int = 1):
        super().__init__()
        name = getattr(type(self), "name", type(self).__name__)
        if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model < 1:
            raise LaminaError(f"{name}: d_model must be an integer >= 1, got {d_model!r}")
        if dataclasses.is_dataclass(options):
            check_values(options, name)
        self.d_model = d_model
        self.options = options
        self.layer_idx = layer_idx
        self.n_layers = n_layers
        object.__setattr__(self, "_shared", None)

    # --- the API ------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        state: State | None = None,
        *,
        valid: torch.Tensor | None = None,
        resets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, State]:
        """``x [B, T, d_model]`` -> ``(y [B, T, d_model], new state)``.

        ``valid`` (``[B, T]`` bool) marks real tokens: a padded position gives
        a zero output and never changes its sequence's state. ``resets``
        (``[B, T]`` bool) marks the first token of a new document: that
        sequence's state is emptied just before it. Both are handled here, once
        for every mixer (see :func:`run_masked`).
        """
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"{type(self).__name__} expects x of shape [B, T, {self.d_model}], got {tuple(x.shape)}")
        if state is None:
            state = self.init_state(x.shape[0], x.device, x.dtype)
        if valid is None and resets is None:
            return self._run(x, state)
        return run_masked(self._run, x, state, valid, resets)

    def _run(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        form = choose_form(self.forms, x.shape[1])
        return getattr(self, f"forward_{form}")(x, state)

    @abc.abstractmethod
    def init_state(self, batch: int, device=None, dtype=None) -> State:
        """The empty state for ``batch`` sequences (all zeros)."""

    def state_size(self) -> int:
        """Floats of state per sequence (what a recurrent model carries between tokens)."""
        return sum(t[0].numel() for t in state_tensors(self.init_state(1, torch.device("meta"))))

    # --- initialisation -------------------------------------------------------------
    def residual_projections(self) -> list[nn.Linear]:
        """The linear layers that write into the residual stream, whose init the model scales with depth:
        the ``out`` projection by default."""
        out = self._modules.get("out")
        return [out] if isinstance(out, nn.Linear) else []

    def reset_parameters(self) -> None:
        """The mixer's own init, run after the model's generic one (none by default)."""

    # --- forms --------------------------------------------------------------------
    # A mixer offering "recurrent" defines ``step(x_t [B, d_model], state) -> (y_t, state)``.
    def forward_recurrent(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        outputs = []
        for t in range(x.shape[1]):
            y, state = self.step(x[:, t], state)
            outputs.append(y)
        return torch.stack(outputs, dim=1), state

    # --- parameters shared across a model's layers ---------------------------------
    def bind_shared(self, table: nn.ParameterDict) -> None:
        """Give this mixer the model's shared parameters (owned and saved by the model)."""
        object.__setattr__(self, "_shared", table)

    def shared(self, name: str) -> torch.Tensor | None:
        table = self._shared
        return None if table is None else table[name]
