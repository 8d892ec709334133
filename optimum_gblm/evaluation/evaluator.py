"""Evaluators: one object per pruner that measures the adapter's metric and keeps the evaluation data between calls
(so dense and pruned are measured on the same tokens or images, loaded and tokenised once)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..data.images import load_images
from .classification import top1_accuracy
from .perplexity import evaluation_stream, perplexity

logger = logging.getLogger(__name__)


class Evaluator:
    metric_name: str

    def evaluate(self, model: nn.Module, **kwargs: Any) -> float:
        raise NotImplementedError


class PerplexityEvaluator(Evaluator):
    """Perplexity over non-overlapping windows of held-out text; token streams cached per source."""

    metric_name = "perplexity"

    def __init__(self, tokenizer: Any, default_seqlen: int) -> None:
        self.tokenizer = tokenizer
        self.default_seqlen = default_seqlen
        self._streams: dict[str, torch.Tensor] = {}

    def evaluate(
        self,
        model: nn.Module,
        seqlen: int | None = None,
        max_windows: int | None = None,
        source: str = "offline-corpus",
        progress: bool = True,
    ) -> float:
        if self.tokenizer is None:
            raise ValueError("perplexity needs a tokenizer")
        if source not in self._streams:
            self._streams[source] = evaluation_stream(self.tokenizer, source)
        return perplexity(model, self._streams[source], seqlen or self.default_seqlen, max_windows, progress)


class AccuracyEvaluator(Evaluator):
    """Top-1 accuracy on a labelled image set; the set of the first call is reused by later calls."""

    metric_name = "accuracy"

    def __init__(self, adapter: Any, preprocessing: dict[str, Any] | None = None) -> None:
        self.adapter = adapter  # checks sizes and labels against the model
        self.preprocessing = preprocessing or adapter.preprocessing()
        self.images: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None

    def evaluate(
        self,
        model: nn.Module,
        images: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        source: str | None = None,
        split: str = "validation",
        batch_size: int = 256,
        progress: bool = True,
    ) -> float:
        """Top-1 accuracy on images= / labels=, an image folder or dataset (source=, split=), or the set given to an
        earlier call."""
        if (images is None) != (labels is None):
            raise ValueError("top-1 accuracy needs both images= and labels=")
        if images is None and source is not None:
            images, labels = load_images(source, split, self.preprocessing)
            if labels is None:
                raise ValueError(f"evaluation source {source!r} has no labels: top-1 accuracy needs labelled images")
        elif images is None:
            images, labels = self.images, self.labels
            if images is None:
                raise ValueError(
                    "top-1 accuracy needs a labelled evaluation set: pass images= and labels=, or source="
                )
        images = self.adapter.check_images(images)
        labels = self.adapter.check_labels(labels, images.shape[0])
        self.images, self.labels = images, labels
        value = top1_accuracy(model, images, labels, batch_size)
        logger.info("top-1 accuracy %.4f on %d images", value, images.shape[0])
        return value


def make_evaluator(
    adapter: Any, tokenizer: Any = None, preprocessing: dict[str, Any] | None = None, seqlen: int = 2048
) -> Evaluator:
    """The evaluator of the adapter's declared metric."""
    if adapter.metric_name == "perplexity":
        return PerplexityEvaluator(tokenizer, seqlen)
    if adapter.metric_name == "accuracy":
        return AccuracyEvaluator(adapter, preprocessing)
    raise ValueError(f"no evaluator for metric {adapter.metric_name!r} (adapter {adapter.name!r})")
