"""Model adapters: a registry of model families with declared capabilities (see base.py).

Adapters register themselves at their definition site; `register_adapter` is public, so a new family is one class.
"""

from __future__ import annotations

# The built-in adapters, in lookup order (the decoder adapter is also the fallback loader for unclaimed names).
from . import decoder, timm_vit  # noqa: F401  isort: skip
from .base import LoadedModel, ModelAdapter
from .decoder import DecoderAdapter
from .discovery import DecoderNotFound, find_decoder_layers
from .families import DECODER_FAMILIES, Family, families_markdown
from .registry import (
    UnsupportedModel,
    adapter_for_source,
    get_adapter,
    list_adapters,
    load_model,
    model_skeleton,
    register_adapter,
    supported_architectures,
)
from .timm_vit import TimmViTAdapter

__all__ = [
    "DECODER_FAMILIES",
    "DecoderAdapter",
    "DecoderNotFound",
    "Family",
    "LoadedModel",
    "ModelAdapter",
    "TimmViTAdapter",
    "UnsupportedModel",
    "adapter_for_source",
    "families_markdown",
    "find_decoder_layers",
    "get_adapter",
    "list_adapters",
    "load_model",
    "model_skeleton",
    "register_adapter",
    "supported_architectures",
]
