"""The state API that every token mixer implements, and the mixer registry.

A mixer maps ``(x, state) -> (y, state')`` with ``x`` and ``y`` of shape
``[B, T, d_model]``. A state is a tuple of tensors whose first dimension is the
batch; it is fixed in shape for the mixer's life, so it can be reset per
sequence, detached between segments and saved in a checkpoint without knowing
what is inside. Zeros everywhere is the empty state.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Callable, ClassVar

import torch
from torch import nn

from lamina.errors import LaminaError
from lamina.mixers.forms import choose_form

State = tuple[torch.Tensor, ...]


class Mixer(nn.Module, abc.ABC):
    """Base class: subclasses set ``forms`` and implement the ``forward_<form>`` they offer.

    ``forward_recurrent`` defaults to a loop over :meth:`step`, so a mixer that
    defines ``step`` gets its token-by-token form for free.
    """

    forms: ClassVar[tuple[str, ...]] = ("recurrent",)
    Options: ClassVar[type] = None  # a dataclass of the mixer's options
    # Parameters shared by every layer of this mixer in a model (name -> init(n_layers, d_model)).
    shared_parameters: ClassVar[dict[str, Callable[[int, int], torch.Tensor]]] = {}

    def __init__(self, d_model: int, options, layer_idx: int = 0, n_layers: int = 1):
        super().__init__()
        self.d_model = d_model
        self.options = options
        self.layer_idx = layer_idx
        self.n_layers = n_layers
        object.__setattr__(self, "_shared", None)

    # --- the API ------------------------------------------------------------------
    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"{type(self).__name__} expects x of shape [B, T, {self.d_model}], got {tuple(x.shape)}")
        if state is None:
            state = self.init_state(x.shape[0], x.device, x.dtype)
        form = choose_form(self.forms, x.shape[1])
        return getattr(self, f"forward_{form}")(x, state)

    @abc.abstractmethod
    def init_state(self, batch: int, device=None, dtype=None) -> State:
        """The empty state for ``batch`` sequences (all zeros)."""

    def state_size(self) -> int:
        """Floats of state per sequence (what a recurrent model carries between tokens)."""
        return sum(t[0].numel() for t in self.init_state(1, torch.device("meta")))

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


def detach_state(state):
    """Cut the graph at a segment boundary (truncated BPTT); works on nested tuples and lists."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()
    return type(state)(detach_state(s) for s in state)


def reset_state(state, keep: torch.Tensor):
    """Empty the state of sequences where ``keep`` (a ``[B]`` bool tensor) is False."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        mask = keep.view(-1, *([1] * (state.dim() - 1)))
        return state * mask.to(state.dtype) if state.dtype != torch.bool else state & mask
    return type(state)(reset_state(s, keep) for s in state)


def flatten_state(state, prefix: str = "state") -> dict[str, torch.Tensor]:
    """Nested state -> flat ``{name: tensor}`` (for checkpoints)."""
    if state is None:
        return {}
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    out = {}
    for i, s in enumerate(state):
        out.update(flatten_state(s, f"{prefix}.{i}"))
    return out


def unflatten_state(template, flat: dict[str, torch.Tensor], prefix: str = "state"):
    """Inverse of :func:`flatten_state`, shaped like ``template``."""
    if template is None:
        return None
    if isinstance(template, torch.Tensor):
        if prefix not in flat or flat[prefix].shape != template.shape:
            raise LaminaError(f"saved state {prefix} is missing or has the wrong shape")
        return flat[prefix].to(template.device, template.dtype)
    return type(template)(unflatten_state(s, flat, f"{prefix}.{i}") for i, s in enumerate(template))


# ------------------------------------------------------------------------------ registry

_REGISTRY: dict[str, type[Mixer]] = {}


def register(name: str):
    """Class decorator: make a mixer available under ``name`` in layer schedules."""

    def wrap(cls: type[Mixer]) -> type[Mixer]:
        if not dataclasses.is_dataclass(cls.Options):
            raise TypeError(f"mixer {name} must define an Options dataclass")
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return wrap


def mixer_names() -> list[str]:
    return sorted(_REGISTRY)


def mixer_class(name: str) -> type[Mixer]:
    if name not in _REGISTRY:
        raise LaminaError(f"unknown mixer {name!r}; available mixers: {', '.join(mixer_names())}")
    return _REGISTRY[name]
