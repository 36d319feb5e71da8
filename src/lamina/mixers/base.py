"""The state API that every token mixer implements, and the mixer registry.

A mixer maps ``(x, state) -> (y, state')`` with ``x`` and ``y`` of shape
``[B, T, d_model]``. A state is a tuple of tensors whose first dimension is the
batch; it is fixed in shape for the mixer's life, so it can be reset per
sequence, detached between segments and saved in a checkpoint without knowing
what is inside. Zeros everywhere is the empty state.

Mixers are token-level recurrences: any split of a sequence into calls with
carried state computes the same function as one call (attention with a
bounded memory: while the memory covers the calls), so a model trains on
segments and generates token by token as one function. Mixers built on fixed
segments of the stream (Infini-attention, the Block-Recurrent Transformer)
count their segments from the empty state and carry the unfinished segment
in their state (:class:`lamina.mixers.kv_memory.Segments`).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Callable, ClassVar

import torch
from torch import nn

from lamina.config import Bounds, check_values, declare_bounds
from lamina.errors import LaminaError
from lamina.mixers.forms import choose_form

State = tuple[torch.Tensor, ...]

# The bounds of options by name, the same for every mixer that has the option: :func:`register` declares
# them on the mixer's ``Options``, so that ``from_dict`` refuses ``heads: 0``, ``mem_len: -1`` or a NaN with
# the config key, and :class:`Mixer` refuses them for options built in Python (a field's own
# ``lamina.config.bounded`` metadata wins). Every float option must be finite even when unlisted here.
# What depends on the width (heads dividing d_model) is each mixer's own check, when it is built.
OPTION_BOUNDS: dict[str, Bounds] = {
    "heads": Bounds(ge=1),
    "head_dim": Bounds(ge=1),
    "width": Bounds(ge=1, note="null: the mixer's default"),
    "hidden": Bounds(ge=1, note="null: d_model"),
    "expand": Bounds(ge=1),
    "expand_ratio": Bounds(ge=1),
    "expand_k": Bounds(gt=0),
    "expand_v": Bounds(gt=0),
    "n_state": Bounds(ge=1),
    "d_state": Bounds(ge=1),
    "groups": Bounds(ge=1),
    "gate_rank": Bounds(ge=1),
    "gate_temperature": Bounds(gt=0),
    "conv_width": Bounds(ge=1),
    "mem_len": Bounds(ge=0, note="0: no memory"),
    "cmem_len": Bounds(ge=0, note="0: no compressed memory"),
    "cmem_rate": Bounds(ge=1),
    "clamp_len": Bounds(ge=0, note="null: no clamping"),
    "window": Bounds(ge=1, note="null: unlimited"),
    "sinks": Bounds(ge=0, note="0: none"),
    "segment": Bounds(ge=1),
    "chunk_size": Bounds(ge=1),
    "persistent": Bounds(ge=0),
    "rope_base": Bounds(gt=0),
    "theta_max": Bounds(gt=0, note="null: the mixer's default"),
    "norm_eps": Bounds(gt=0),
    "eps": Bounds(gt=0),
    "dt_min": Bounds(gt=0),
    "dt_max": Bounds(gt=0),
    "dt_floor": Bounds(ge=0),
    "a_min": Bounds(gt=0),
    "a_max": Bounds(gt=0),
}


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


def select_state(keep_new: torch.Tensor, new, old):
    """Per sequence, ``new`` where ``keep_new`` (a ``[B]`` bool tensor) is True, else ``old``."""
    if isinstance(new, torch.Tensor):
        return torch.where(keep_new.view(-1, *([1] * (new.dim() - 1))), new, old.to(new.dtype))
    return type(new)(select_state(keep_new, n, o) for n, o in zip(new, old))


def run_masked(run, x: torch.Tensor, state, valid: torch.Tensor | None, resets: torch.Tensor | None):
    """Apply ``run(x, state) -> (y, state)`` under padding and document-boundary masks.

    The sequence is cut wherever any row switches between real tokens and
    padding or starts a document; inside each span every row is all real or
    all padding. Each span runs with the state carried (the forms' equivalence
    makes that exact); rows that are padding in a span keep their state and
    get zero outputs, and rows starting a document enter it with an empty
    state. The cost is one call per span, whatever the mixer.
    """
    B, T = x.shape[:2]
    for name, mask in (("valid", valid), ("resets", resets)):
        if mask is not None and tuple(mask.shape) != (B, T):
            raise ValueError(f"{name} must be a [B, T] = [{B}, {T}] bool mask, got {tuple(mask.shape)}")
    valid = torch.ones(B, T, dtype=torch.bool, device=x.device) if valid is None else valid.to(x.device, torch.bool)
    resets = torch.zeros(B, T, dtype=torch.bool, device=x.device) if resets is None else resets.to(x.device, torch.bool)
    outputs = []
    for a, b in mask_spans(valid, resets):
        if resets[:, a].any():
            state = reset_state(state, ~resets[:, a])
        y, new = run(x[:, a:b], state)
        live = valid[:, a]
        state = select_state(live, new, state)
        outputs.append(y * live.view(B, 1, 1).to(y.dtype))
    return torch.cat(outputs, dim=1), state


def mask_spans(valid: torch.Tensor, resets: torch.Tensor) -> list[tuple[int, int]]:
    """The ``[a, b)`` spans :func:`run_masked` cuts ``[B, T]`` masks into.

    A span starts at 0, at every document start of any row and wherever any
    row switches between real tokens and padding.
    """
    cut = resets.any(0)
    cut[0] = True
    cut[1:] |= (valid[:, 1:] != valid[:, :-1]).any(0)
    starts = cut.nonzero().flatten().tolist() + [valid.shape[1]]
    return list(zip(starts[:-1], starts[1:]))


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
        options = {f.name for f in dataclasses.fields(cls.Options)}
        declare_bounds(cls.Options, {key: b for key, b in OPTION_BOUNDS.items() if key in options})
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
