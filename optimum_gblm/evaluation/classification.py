"""Top-1 accuracy of image classifiers."""

from __future__ import annotations

import torch
from torch import nn

from ..utils import inference_mode, model_device


def top1_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    """Fraction of images whose arg-max logit equals the label."""
    if images.shape[0] != labels.shape[0] or images.shape[0] == 0:
        raise ValueError(f"need as many labels as images (got {images.shape[0]} images, {labels.shape[0]} labels)")
    device = model_device(model)
    correct = 0
    with inference_mode(model):
        for i in range(0, images.shape[0], batch_size):
            logits = model(images[i : i + batch_size].to(device))
            correct += int((logits.argmax(dim=-1).cpu() == labels[i : i + batch_size]).sum())
    return correct / images.shape[0]
