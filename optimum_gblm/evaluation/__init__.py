"""Evaluation: perplexity with the reference protocol, top-1 accuracy, and per-pruner evaluators."""

from .classification import top1_accuracy
from .evaluator import (
    DEFAULT_EVAL_WINDOWS,
    DEFAULT_IMAGE_BATCH,
    AccuracyEvaluator,
    Evaluation,
    Evaluator,
    PerplexityEvaluator,
    make_evaluator,
)
from .perplexity import evaluation_stream, perplexity

__all__ = [
    "DEFAULT_EVAL_WINDOWS",
    "DEFAULT_IMAGE_BATCH",
    "AccuracyEvaluator",
    "Evaluation",
    "Evaluator",
    "PerplexityEvaluator",
    "evaluation_stream",
    "make_evaluator",
    "perplexity",
    "top1_accuracy",
]
