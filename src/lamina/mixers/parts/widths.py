"""Small helpers shared by several mixers: widths derived from options."""

from __future__ import annotations

from lamina.errors import LaminaError


def expanded_width(mixer: str, d_model: int, expand: float, heads: int, option: str) -> int:
    """``d_model * expand`` as a positive integer width divisible by ``heads``, else a LaminaError naming ``option``."""
    width = d_model * expand
    if expand <= 0 or width != int(width) or int(width) % heads:
        raise LaminaError(
            f"{mixer}: d_model * {option} = {d_model} * {expand} must be a positive integer divisible by "
            f"heads = {heads}; change {option}, heads or model.d_model"
        )
    return int(width)
