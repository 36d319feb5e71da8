"""matplotlib, imported only where a plot is drawn: it is the optional ``plots`` extra."""

from __future__ import annotations

from lamina.errors import LaminaError


def pyplot(purpose: str):
    """matplotlib's pyplot on a file-only backend, or a LaminaError naming ``purpose`` and how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise LaminaError(f"{purpose} need matplotlib: pip install 'lamina[plots]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
