"""Evaluation with carried state, loss by position, metrics, generation, and passkey retrieval."""

from lamina.eval.evaluate import BucketResult, EvalResult, EvalStopped, autocast_for, evaluate, loss_by_position
from lamina.eval.generate import generate, sample_next
from lamina.eval.metrics import format_metric, metric_value
from lamina.eval.passkey import passkey_accuracy

__all__ = [
    "BucketResult",
    "EvalResult",
    "EvalStopped",
    "autocast_for",
    "evaluate",
    "format_metric",
    "generate",
    "loss_by_position",
    "metric_value",
    "passkey_accuracy",
    "sample_next",
]
