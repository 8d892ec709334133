"""Evaluators: one object per pruner that measures the adapter's metric and keeps the evaluation data between calls
(so dense and pruned are measured on the same tokens or images, loaded and tokenised once)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..data.images import load_images
from .classification import top1_accuracy
from .metrics import Evaluation, Evaluator, get_metric, list_metrics, register_metric
from .perplexity import evaluation_stream, perplexity

logger = logging.getLogger(__name__)

# Perplexity windows per evaluation unless `max_windows` says otherwise (None: all of them). All windows of a long
# text at a short seqlen can take many minutes; 40 windows keep a check quick and still stable.
DEFAULT_EVAL_WINDOWS = 40
DEFAULT_IMAGE_BATCH = 256


__all__ = ["AccuracyEvaluator", "Evaluation", "Evaluator", "PerplexityEvaluator", "make_evaluator"]


@register_metric
class PerplexityEvaluator(Evaluator):
    """Perplexity over non-overlapping windows of held-out text; token streams cached per source."""

    metric_name = "perplexity"
    label = "Perplexity"
    higher_is_better = False
    inputs = "text"
    keywords = ("source", "seqlen", "max_windows", "progress")

    @classmethod
    def for_model(
        cls, adapter: Any, tokenizer: Any, preprocessing: dict[str, Any] | None, seqlen: int
    ) -> PerplexityEvaluator:
        return cls(tokenizer, seqlen)

    def __init__(self, tokenizer: Any, default_seqlen: int) -> None:
        self.tokenizer = tokenizer
        self.default_seqlen = default_seqlen
        self._streams: dict[str, torch.Tensor] = {}

    def evaluate(
        self,
        model: nn.Module,
        source: str | None = None,
        seqlen: int | None = None,
        max_windows: int | None = DEFAULT_EVAL_WINDOWS,
        progress: bool = True,
    ) -> Evaluation:
        """The first `max_windows` windows (None: all) of `seqlen` tokens (default: the calibration seqlen) of
        `source` (default: the offline corpus's evaluation slice)."""
        if max_windows is not None and (isinstance(max_windows, bool) or not isinstance(max_windows, int)):
            raise TypeError(f"max_windows must be a positive int or None (all windows), got {max_windows!r}")
        if max_windows is not None and max_windows < 1:
            raise ValueError(f"max_windows must be >= 1 or None (all windows), got {max_windows}")
        if self.tokenizer is None:
            raise ValueError("perplexity needs a tokenizer")
        source, seqlen = source or "offline-corpus", seqlen or self.default_seqlen
        if source not in self._streams:
            self._streams[source] = evaluation_stream(self.tokenizer, source)
        available = self._streams[source].numel() // seqlen
        windows = available if max_windows is None else min(available, max_windows)
        logger.info(
            "Perplexity on %d of %d windows of %d tokens from %s (max_windows=%s; max_windows=None evaluates all)",
            windows,
            available,
            seqlen,
            source,
            max_windows,
        )
        value = perplexity(model, self._streams[source], seqlen, windows, progress)
        return Evaluation(value, {"source": source, "seqlen": seqlen, "max_windows": max_windows, "windows": windows})


@register_metric
class AccuracyEvaluator(Evaluator):
    """Top-1 accuracy on a labelled image set; the set of the first call is reused by later calls."""

    metric_name = "accuracy"
    label = "Top-1 accuracy"
    higher_is_better = True
    inputs = "images"
    keywords = ("images", "labels", "source", "split", "batch_size", "progress")

    @classmethod
    def for_model(
        cls, adapter: Any, tokenizer: Any, preprocessing: dict[str, Any] | None, seqlen: int
    ) -> AccuracyEvaluator:
        return cls(adapter, preprocessing)

    @classmethod
    def format_value(cls, value: float) -> str:
        return f"{value:.2%}"

    @classmethod
    def format_change(cls, value: float, reference: float) -> str:
        return f"{(value - reference) * 100:+.2f} points"  # a relative change of a share reads ambiguously

    def __init__(self, adapter: Any, preprocessing: dict[str, Any] | None = None) -> None:
        self.adapter = adapter  # checks sizes and labels against the model
        self.preprocessing = preprocessing or adapter.preprocessing()
        self.images: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self.origin: dict[str, Any] = {}  # where the kept set came from: source (and split), or given tensors

    def evaluate(
        self,
        model: nn.Module,
        images: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        source: str | None = None,
        split: str = "validation",
        batch_size: int = DEFAULT_IMAGE_BATCH,
        progress: bool = True,
    ) -> Evaluation:
        """Top-1 accuracy on images= / labels=, an image folder or dataset (source=, split=), or the set given to an
        earlier call."""
        if (images is None) != (labels is None):
            raise ValueError("top-1 accuracy needs both images= and labels=")
        origin = {"source": None}
        if images is None and source is not None:
            images, labels = load_images(source, split, self.preprocessing)
            origin = {"source": source, "split": split}
            if labels is None:
                raise ValueError(f"evaluation source {source!r} has no labels: top-1 accuracy needs labelled images")
        elif images is None:
            images, labels, origin = self.images, self.labels, self.origin
            if images is None:
                raise ValueError(
                    "top-1 accuracy needs a labelled evaluation set: pass images= and labels=, or source="
                )
        images = self.adapter.check_images(images)
        labels = self.adapter.check_labels(labels, images.shape[0])
        self.images, self.labels, self.origin = images, labels, origin
        value = top1_accuracy(model, images, labels, batch_size)
        logger.info("top-1 accuracy %.4f on %d images", value, images.shape[0])
        return Evaluation(value, {**origin, "images": int(images.shape[0])})


def make_evaluator(
    adapter: Any, tokenizer: Any = None, preprocessing: dict[str, Any] | None = None, seqlen: int = 2048
) -> Evaluator:
    """The evaluator of the adapter's declared metric (the registered `Evaluator` of that name)."""
    try:
        metric = get_metric(adapter.metric_name)
    except ValueError:
        raise ValueError(
            f"no evaluator for metric {adapter.metric_name!r} (adapter {adapter.name!r}): registered metrics are "
            f"{', '.join(list_metrics())}; register one with optimum_gblm.register_metric"
        ) from None
    return metric.for_model(adapter, tokenizer, preprocessing, seqlen)
