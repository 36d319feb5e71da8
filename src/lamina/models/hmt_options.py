"""The Hierarchical Memory Transformer's options, ``model.hmt`` (the model is :mod:`lamina.models.hmt`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from lamina.config import Config, ModelSection, bounded, register_section
from lamina.errors import LaminaError


@register_section
@dataclass
class HMTOptions(ModelSection):
    """He et al. 2024: sensory, short-term and long-term memory around each segment of the token stream."""

    key: ClassVar[str] = "hmt"
    conflicts: ClassVar[dict[str, str]] = {"memory_tokens": "are two segment memories and only one can be used"}

    segment: Optional[int] = bounded(None, ge=1, note="null: train.seq_len")  # tokens per segment
    # sensory memory: the last tokens of the previous segment, read before each segment
    sensory: int = bounded(8, ge=0, note="0: none")
    # long-term memory: the last memory embeddings kept for recall (FIFO)
    cache: int = bounded(32, ge=1)
    # tokens summarised into the recall query
    summary_len: Optional[int] = bounded(None, ge=1, note="null: half a segment")

    def check(self) -> None:
        """The sensory and summary windows count tokens of the previous segment: at most a segment each."""
        if self.segment is None:
            return  # train.seq_len, checked in complete()
        for key in ("sensory", "summary_len"):
            value = getattr(self, key)
            if value is not None and value > self.segment:
                raise LaminaError(
                    f"model.hmt.{key} = {value} is longer than a segment (model.hmt.segment = {self.segment}); "
                    f"it counts tokens of the previous segment, so give at most {self.segment}"
                )

    def complete(self, config: Config) -> None:
        """A segment is a training segment unless given."""
        super().complete(config)
        if self.segment is None:
            self.segment = config.train.seq_len
            self.check()
