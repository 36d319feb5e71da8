"""MEGABYTE's options, ``model.megabyte`` (the model is :mod:`lamina.models.megabyte`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from lamina.config import ModelSection, bounded, register_section
from lamina.models.hat_options import NO_SEGMENT_MEMORY


@register_section
@dataclass
class MegabyteOptions(ModelSection):
    """Yu et al. 2023: the local model within each patch of bytes.

    The global model over patches is the model's own schedule (``layers``, ``mixers``, ``d_model``).
    """

    key: ClassVar[str] = "megabyte"
    conflicts: ClassVar[dict[str, str]] = NO_SEGMENT_MEMORY
    tokenizer: ClassVar[str] = "bytes"
    layer_schedules: ClassVar[tuple] = (("local_layers", "local_mixers"),)

    patch: int = bounded(8, ge=2)  # P: bytes per patch
    local_d_model: int = bounded(128, ge=1)  # width of the local model (and of each byte's embedding)
    local_layers: Any = field(default_factory=lambda: ["attn"])  # the local model's layer schedule
    local_mixers: dict = field(default_factory=dict)  # default options per mixer name in the local model
