"""Evaluation with carried state, loss by position, metrics, generation, and passkey retrieval."""

from lamina.eval.evaluate import BucketResult, EvalResult, EvalStopped, evaluate, loss_by_position
from lamina.eval.generate import generate, sample_next
from lamina.eval.metrics import format_metric, metric_value
from lamina.eval.passkey import passkey_accuracy
from lamina.eval.scoring import Scored, score

__all__ = [
    "BucketResult",
    "EvalResult",
    "EvalStopped",
    "evaluate",
    "format_metric",
    "generate",
    "loss_by_position",
    "metric_value",
    "passkey_accuracy",
    "sample_next",
    "Scored",
    "score",
]
