"""Tier 3: one generic LM built from a layer schedule, and the byte models built from several (HAT, MEGABYTE)."""

from torch import nn

from lamina.config import ModelConfig
from lamina.models.compile import compile_model, trace_settings
from lamina.models.hat import HAT
from lamina.models.lm import LM
from lamina.models.megabyte import Megabyte
from lamina.models.schedule import LayerSpec, parse_layers


def build_model(config: ModelConfig, vocab_size: int) -> nn.Module:
    """The model ``config`` describes: :class:`HAT` with ``model.hat``, :class:`Megabyte` with ``model.megabyte``,
    else the generic :class:`LM` (the config allows one of the two at most)."""
    if config.hat is not None:
        return HAT(config, vocab_size)
    if config.megabyte is not None:
        return Megabyte(config, vocab_size)
    return LM(config, vocab_size)


__all__ = ["HAT", "LM", "LayerSpec", "Megabyte", "build_model", "compile_model", "parse_layers", "trace_settings"]
