"""A token stream scored the ways ``lamina eval`` reports it: with the state carried across segments, without it,
or both, and optionally split by the position of each target (:func:`lamina.eval.loss_by_position`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from lamina.eval.evaluate import BucketResult, EvalResult, evaluate, loss_by_position


@dataclass
class Scored:
    """One pass over the stream: whether the state was carried, the loss, and the loss by position if asked."""

    carry: bool
    result: EvalResult
    buckets: BucketResult | None = None


def score(model, tokens, carry_modes: Sequence[bool], *, edges: Sequence[int] | None = None, eos_id: int | None = None,
          positions: str = "document", **common) -> Iterator[Scored]:
    """One :class:`Scored` per mode of ``carry_modes``, as each pass ends. With ``edges`` the loss is split by
    position (from the document start, documents ending with ``eos_id``, or from the stream start); ``common``
    are :func:`lamina.eval.evaluate`'s options (batch size, segment length, device, ...)."""
    for carry in carry_modes:
        if edges:
            buckets = loss_by_position(model, tokens, edges, eos_id=eos_id, positions=positions, carry=carry, **common)
            yield Scored(carry, buckets.total, buckets)
        else:
            yield Scored(carry, evaluate(model, tokens, carry=carry, **common))
