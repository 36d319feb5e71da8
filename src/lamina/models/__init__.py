"""Tier 3: one generic LM built from a layer schedule, and the hierarchical byte model built around it."""

from torch import nn

from lamina.config import ModelConfig
from lamina.models.hat import HAT
from lamina.models.lm import LM
from lamina.models.schedule import LayerSpec, parse_layers


def build_model(config: ModelConfig, vocab_size: int) -> nn.Module:
    """The model ``config`` describes: a :class:`HAT` when ``model.hat`` is set, else the generic :class:`LM`."""
    if config.hat is not None:
        return HAT(config, vocab_size)
    return LM(config, vocab_size)


__all__ = ["HAT", "LM", "LayerSpec", "build_model", "parse_layers"]
