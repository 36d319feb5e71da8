"""A model's layer schedule, given as data.

Accepted forms of ``model.layers``::

    [hgrn, hgrn, attn]                         # names
    [hgrn, {attn: {heads: 8, mem_len: 256}}]   # per-layer options
    {pattern: [hgrn, hgrn, attn], repeat: 4}   # a repeating pattern

``model.mixers`` holds default options per mixer name (``{attn: {heads: 6}}``);
per-layer options override them. Every option is checked against the mixer's
own ``Options`` dataclass, so a typo names the key and the allowed ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lamina.config import from_dict
from lamina.errors import LaminaError
from lamina.mixers import mixer_class, mixer_names


@dataclass(frozen=True)
class LayerSpec:
    name: str
    options: Any  # the mixer's Options dataclass instance


def _entries(layers: Any, where: str) -> list:
    if isinstance(layers, dict):
        unknown = set(layers) - {"pattern", "repeat"}
        if unknown or "pattern" not in layers:
            raise LaminaError(
                f"{where} as a mapping needs exactly the keys pattern and repeat, "
                "e.g. {pattern: [hgrn, attn], repeat: 3}"
            )
        repeat = layers.get("repeat", 1)
        if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
            raise LaminaError(f"{where}.repeat must be a positive integer, got {repeat!r}")
        return _entries(layers["pattern"], where) * repeat
    if isinstance(layers, str):
        return [layers]
    if not isinstance(layers, (list, tuple)) or not layers:
        raise LaminaError(f"{where} must be a non-empty list of mixer names, e.g. [hgrn, hgrn, attn]")
    return list(layers)


def named_mixer(name: Any, where: str) -> type:
    """The mixer class registered as ``name``, found at config key ``where``; else an error naming the key."""
    if not isinstance(name, str) or name not in mixer_names():
        raise LaminaError(f"{where}: unknown mixer {name!r}; available mixers: {', '.join(mixer_names())}")
    return mixer_class(name)


def parse_layers(layers: Any, defaults: dict | None = None, where: str = "model.layers") -> list[LayerSpec]:
    """Expand and validate a layer schedule (the config key ``where``) into one :class:`LayerSpec` per layer."""
    defaults = defaults or {}
    for name, options in defaults.items():  # model.mixers is checked even for mixers no layer uses
        from_dict(named_mixer(name, f"model.mixers.{name}").Options, options, f"model.mixers.{name}")
    specs = []
    for i, entry in enumerate(_entries(layers, where)):
        if isinstance(entry, str):
            name, options = entry, {}
        elif isinstance(entry, dict) and len(entry) == 1:
            (name, options), = entry.items()
            options = options or {}
        else:
            raise LaminaError(f"{where}[{i}] must be a mixer name or {{name: {{options}}}}, got {entry!r}")
        cls = named_mixer(name, f"{where}[{i}]")
        merged = {**(defaults.get(name) or {}), **options}
        specs.append(LayerSpec(name, from_dict(cls.Options, merged, f"{where}[{i}].{name}")))
    return specs
