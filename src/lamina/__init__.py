"""lamina: sequence models that see beyond a fixed context.

Every token mixer maps ``(x, state) -> (y, state')``; models are built from a
layer schedule of mixers and trained segment by segment with carried state.
"""

from lamina.errors import LaminaError

__version__ = "0.1.0"
__all__ = ["LaminaError", "__version__"]
