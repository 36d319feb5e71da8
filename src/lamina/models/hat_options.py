"""The Hierarchical Autoregressive Transformer's options, ``model.hat`` (the model is :mod:`lamina.models.hat`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from lamina.config import ModelSection, bounded, register_section

# what a byte model (HAT, MEGABYTE) cannot be used with
NO_SEGMENT_MEMORY = {
    key: "cannot be used together: a byte model reads a byte stream of its own and takes no segment memory"
    for key in ("hmt", "memory_tokens")
}


@register_section
@dataclass
class HATOptions(ModelSection):
    """Neitemeier et al. 2025: a byte encoder and decoder around a backbone over words.

    The backbone over words is ``model.layers`` at ``model.d_model``; the byte encoder and decoder are layer
    schedules of their own at ``d_byte``, with ``model.mixers`` as their defaults too.
    """

    key: ClassVar[str] = "hat"
    conflicts: ClassVar[dict[str, str]] = {"megabyte": "are two byte models and only one can be used",
                                           **NO_SEGMENT_MEMORY}
    tokenizer: ClassVar[str] = "bytes"
    layer_schedules: ClassVar[tuple] = (("encoder_layers", None), ("decoder_layers", None))

    d_byte: int = bounded(128, ge=1)  # width of the byte encoder and decoder
    encoder_layers: Any = field(default_factory=lambda: ["attn"])
    decoder_layers: Any = field(default_factory=lambda: ["attn"])
    max_word_len: int = bounded(16, ge=1)  # longer runs are cut into words of this many bytes (lamina.data.words)
