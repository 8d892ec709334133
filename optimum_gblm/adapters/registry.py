"""The adapter registry: which adapter serves a loaded model or a model name, and the error when none does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .base import LoadedModel, ModelAdapter

_ADAPTERS: list[type[ModelAdapter]] = []


class UnsupportedModel(ValueError):
    """No adapter supports this architecture (raised before any weight is loaded where possible)."""

    def __init__(self, kind: str, reason: str | None = None) -> None:
        why = f" ({reason})" if reason else ""
        super().__init__(
            f"No adapter for architecture {kind!r}{why}. Supported: {'; '.join(supported_architectures())}"
        )
        self.kind = kind


def register_adapter(cls: type[ModelAdapter]) -> type[ModelAdapter]:
    """Register a `ModelAdapter` subclass (usable as a class decorator)."""
    if any(a.name == cls.name for a in _ADAPTERS):
        raise ValueError(f"An adapter named {cls.name!r} is already registered")
    for attribute in ("name", "library", "metric_name", "block_path"):
        if not getattr(cls, attribute, None):
            raise ValueError(f"adapter {cls.__name__} needs `{attribute}`")
    _ADAPTERS.append(cls)
    return cls


def list_adapters() -> list[type[ModelAdapter]]:
    return list(_ADAPTERS)


def supported_architectures() -> list[str]:
    return [name for cls in _ADAPTERS for name in cls.architectures()]


def get_adapter(model: nn.Module) -> ModelAdapter:
    """The adapter for a loaded model, or `UnsupportedModel` naming the supported architectures."""
    for cls in _ADAPTERS:
        if cls.supports(model):
            return cls.for_model(model)
    raise UnsupportedModel(getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__)


def adapter_for_source(source: str) -> type[ModelAdapter]:
    """The adapter that loads a model name or folder: the one that claims it, else the fallback loader."""
    for cls in _ADAPTERS:
        if cls.claims_source(source):
            return cls
    fallback = [cls for cls in _ADAPTERS if cls.claims_any_source]
    if not fallback:
        raise UnsupportedModel(source)
    return fallback[0]


def load_model(model: str | Path | nn.Module | None, config: Any, **load_kwargs: Any) -> LoadedModel:
    """Resolve what the user named (nothing = the embedded default, a Hub id, a folder, a timm name, an instance)
    into a loaded model with its adapter, tokenizer / preprocessing and id."""
    if isinstance(model, nn.Module):
        return type(get_adapter(model)).wrap(model, config, **load_kwargs)
    if model is None:
        from ..assets import DEFAULT_MODEL_ID, default_model_path

        source = str(default_model_path())
        load_kwargs.setdefault("model_id", DEFAULT_MODEL_ID)
    else:
        source = check_not_a_file(str(model))
    return adapter_for_source(source).load(source, config, **load_kwargs)


def check_not_a_file(source: str) -> str:
    """A model is a folder, a Hub id or a timm name: a file (config.json, weights) would otherwise reach a loader
    that tries to unpickle it."""
    if Path(source).expanduser().is_file():
        folder = Path(source).parent.as_posix()
        raise ValueError(
            f"model {source!r} is a file: a model is a folder (config.json and weights), a Hub id (org/name) or a "
            f"timm name (timm/<name>); pass its folder ({folder})"
        )
    return source


def model_skeleton(model: str | Path | None, config: Any) -> tuple[ModelAdapter, nn.Module] | None:
    """The adapter and the model's structure on the meta device, from a local or cached config only (no weights,
    no network; the embedded default only once converted); None when it cannot be known so. Raises what loading
    would raise before any weight: a missing local path, an unsupported architecture."""
    if model is None:
        from ..assets import converted_default_model

        path = converted_default_model()
        if path is None:
            return None
        source = str(path)
    else:
        source = check_not_a_file(str(model))
    cls = adapter_for_source(source)
    skeleton = cls.skeleton(source, config)
    return None if skeleton is None else (cls.for_model(skeleton), skeleton)
