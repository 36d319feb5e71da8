"""Tier 3: one generic LM built from a layer schedule."""

from lamina.models.lm import LM
from lamina.models.schedule import LayerSpec, parse_layers

__all__ = ["LM", "LayerSpec", "parse_layers"]
