"""Loss in nats per token -> the metric of the corpus' unit.

Byte and character corpora report bits per byte / per character
(``nats / ln 2``); word corpora report perplexity (``exp(nats)``).
"""

from __future__ import annotations

import math

UNIT_METRIC = {"byte": "bpb", "char": "bpc", "word": "ppl"}


def metric_value(unit: str, nats: float) -> float:
    if unit == "word":
        return math.exp(min(nats, 700.0))
    return nats / math.log(2)


def format_metric(unit: str, nats: float) -> str:
    """E.g. ``1.234 bits/byte``, ``1.180 bits/char`` or ``perplexity 85.3``."""
    if unit == "word":
        return f"perplexity {metric_value(unit, nats):.2f}"
    return f"{metric_value(unit, nats):.4f} bits/{unit}"
