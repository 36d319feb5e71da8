"""What every state is made of, and the operations that work on any state without knowing it.

A state is a tree of tensors: a named tuple (``typing.NamedTuple``, so code
reads ``state.keys``, not ``state[0]``), a plain tuple or list of states, a
tensor, or ``None`` for a part a mixer's options leave out. Every tensor's
first dimension is the batch. Detaching between segments, emptying
sequences at document starts, keeping padded rows' states, slicing rows and
saving by name (:func:`flatten_state`) walk that tree, so they work for every
mixer and model alike.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from lamina.errors import LaminaError

State = tuple  # a NamedTuple (or tuple) of tensors, Nones and nested states


class MatrixState(NamedTuple):
    """The state of a matrix-state recurrence (gated linear attention and its kin)."""

    S: torch.Tensor  # [B, H, K, V], fp32 or wider


class MatrixConvState(NamedTuple):
    """A matrix state and the inputs a short causal convolution before it still needs (Mamba2, DeltaNet)."""

    S: torch.Tensor  # [B, H, K, V], fp32 or wider
    conv: torch.Tensor | None  # [B, conv_width - 1, channels]; None without a convolution


class HiddenState(NamedTuple):
    """The state of an elementwise recurrence."""

    h: torch.Tensor  # [B, width], fp32 or wider


def rebuild(template, items):
    """A container like ``template`` (a named tuple, tuple or list) holding ``items``."""
    items = list(items)
    return template._make(items) if hasattr(template, "_fields") else type(template)(items)


def map_state(fn: Callable[..., torch.Tensor], state, *others):
    """``fn`` applied to every tensor of ``state`` (with the tensors at the same place in ``others``)."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return fn(state, *others)
    return rebuild(state, (map_state(fn, s, *(o[i] for o in others)) for i, s in enumerate(state)))


def state_tensors(state) -> list[torch.Tensor]:
    """Every tensor of ``state``, in order."""
    if state is None:
        return []
    if isinstance(state, torch.Tensor):
        return [state]
    return [t for s in state for t in state_tensors(s)]


def detach_state(state):
    """Cut the graph at a segment boundary (truncated BPTT)."""
    return map_state(torch.Tensor.detach, state)


def reset_state(state, keep: torch.Tensor):
    """Empty the state of sequences where ``keep`` (a ``[B]`` bool tensor) is False."""

    def reset(t: torch.Tensor) -> torch.Tensor:
        mask = keep.view(-1, *([1] * (t.dim() - 1)))
        return t * mask.to(t.dtype) if t.dtype != torch.bool else t & mask

    return map_state(reset, state)


def select_state(keep_new: torch.Tensor, new, old):
    """Per sequence, ``new`` where ``keep_new`` (a ``[B]`` bool tensor) is True, else ``old``."""
    return map_state(
        lambda n, o: torch.where(keep_new.view(-1, *([1] * (n.dim() - 1))), n, o.to(n.dtype)), new, old
    )


def rows_of_state(state, rows: slice):
    """The state of the sequences ``rows`` (a slice of the batch)."""
    return map_state(lambda t: t[rows], state)


def _names(state) -> list[str]:
    return list(state._fields) if hasattr(state, "_fields") else [str(i) for i in range(len(state))]


def flatten_state(state, prefix: str = "state") -> dict[str, torch.Tensor]:
    """Nested state -> flat ``{name: tensor}`` named by field (``state.0.keys``), for checkpoints and comparisons."""
    if state is None:
        return {}
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    out = {}
    for name, s in zip(_names(state), state):
        out.update(flatten_state(s, f"{prefix}.{name}"))
    return out


def unflatten_state(template, flat: dict[str, torch.Tensor], prefix: str = "state"):
    """Inverse of :func:`flatten_state`, shaped like ``template`` (tensors keep their saved dtype).

    A name missing from ``flat``, a tensor of another shape, or a name ``flat``
    has beyond the template (a state saved by another layout) is a LaminaError.
    """
    state = _unflatten(template, flat, prefix)
    extra = sorted(flat.keys() - flatten_state(template, prefix).keys())
    if extra:
        raise LaminaError(f"saved state {extra[0]} is not part of this model's state; it was saved by another layout")
    return state


def restore_state(saved, template):
    """A state saved as :func:`flatten_state`'s ``{name: tensor}``, shaped like ``template``.

    A state saved by another layout is a LaminaError: another config, or the
    positional tuples of older lamina versions (flattened here by index, so
    their names never match a named state's).
    """
    return unflatten_state(template, saved if isinstance(saved, dict) else flatten_state(saved))


def _unflatten(template, flat: dict[str, torch.Tensor], prefix: str):
    if template is None:
        return None
    if isinstance(template, torch.Tensor):
        if prefix not in flat or flat[prefix].shape != template.shape:
            raise LaminaError(f"saved state {prefix} is missing or has the wrong shape")
        return flat[prefix].to(template.device)
    return rebuild(template, (_unflatten(s, flat, f"{prefix}.{n}") for n, s in zip(_names(template), template)))
