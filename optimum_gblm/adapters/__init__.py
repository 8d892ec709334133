"""Registry of model adapters."""

from __future__ import annotations

from torch import nn

from .base import ModelAdapter
from .decoder import DECODER_FAMILIES, DecoderAdapter


def supported_architectures() -> list[str]:
    names = [f"{t} (transformers)" for t in DECODER_FAMILIES]
    names.append("VisionTransformer and subclasses (timm: ViT, DeiT, ...)")
    return names


def get_adapter(model: nn.Module) -> ModelAdapter:
    """Pick the adapter for a loaded model, or fail naming the supported architectures."""
    if DecoderAdapter.supports(model):
        return DecoderAdapter(model.config.model_type)
    from .timm_vit import TimmViTAdapter  # imported lazily: timm pulls in torchvision

    if TimmViTAdapter.supports(model):
        return TimmViTAdapter(model)  # reads input size, classes and data config from the model
    kind = getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__
    raise ValueError(f"No adapter for architecture {kind!r}. Supported: {'; '.join(supported_architectures())}")


def check_model_type(model_type: str) -> None:
    """Fail early (before loading weights) for a transformers config of an unsupported family."""
    if model_type not in DECODER_FAMILIES:
        raise ValueError(
            f"No adapter for architecture {model_type!r}. Supported: {'; '.join(supported_architectures())}"
        )


__all__ = ["DecoderAdapter", "ModelAdapter", "check_model_type", "get_adapter", "supported_architectures"]
