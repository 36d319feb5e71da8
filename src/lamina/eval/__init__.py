"""Evaluation with carried state, metrics, and generation."""

from lamina.eval.evaluate import EvalResult, autocast_for, evaluate
from lamina.eval.generate import generate, sample_next
from lamina.eval.metrics import format_metric, metric_value

__all__ = ["EvalResult", "autocast_for", "evaluate", "format_metric", "generate", "metric_value", "sample_next"]
