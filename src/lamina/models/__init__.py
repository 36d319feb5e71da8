"""Tier 3: one generic LM built from a layer schedule, and MEGABYTE built from two."""

from lamina.config import ModelConfig
from lamina.models.lm import LM
from lamina.models.megabyte import Megabyte
from lamina.models.schedule import LayerSpec, parse_layers


def build_model(config: ModelConfig, vocab_size: int) -> LM | Megabyte:
    """The model ``config`` describes: MEGABYTE when ``model.megabyte`` is set, else the generic LM."""
    return Megabyte(config, vocab_size) if config.megabyte is not None else LM(config, vocab_size)


__all__ = ["LM", "LayerSpec", "Megabyte", "build_model", "parse_layers"]
