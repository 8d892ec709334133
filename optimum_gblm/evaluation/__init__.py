"""Evaluation: perplexity with the reference protocol, top-1 accuracy, and per-pruner evaluators (registered by
metric name in metrics.py)."""

from .classification import top1_accuracy
from .evaluator import (
    DEFAULT_EVAL_WINDOWS,
    DEFAULT_IMAGE_BATCH,
    AccuracyEvaluator,
    PerplexityEvaluator,
    make_evaluator,
)
from .metrics import Evaluation, Evaluator, find_metric, get_metric, list_metrics, register_metric
from .perplexity import evaluation_stream, perplexity

__all__ = [
    "DEFAULT_EVAL_WINDOWS",
    "DEFAULT_IMAGE_BATCH",
    "AccuracyEvaluator",
    "Evaluation",
    "Evaluator",
    "PerplexityEvaluator",
    "evaluation_stream",
    "find_metric",
    "get_metric",
    "list_metrics",
    "make_evaluator",
    "perplexity",
    "register_metric",
    "top1_accuracy",
]
