"""Resolve what the user named (nothing, a Hub id, a folder, a timm name, an instance) into a loaded model."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .adapters import ModelAdapter, check_model_type, get_adapter
from .configuration import GBLMConfig
from .utils import DTYPES

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: nn.Module
    adapter: ModelAdapter
    tokenizer: Any = None
    model_id: str | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)


def _looks_local(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or Path(name).suffix in (".safetensors", ".bin", ".pth")


def _is_timm_source(name: str) -> bool:
    if name.startswith(("timm/", "hf-hub:", "timm:")):
        return True
    config = Path(name).expanduser() / "config.json"
    if config.is_file():
        import json

        data = json.loads(config.read_text())
        return "architecture" in data and "model_type" not in data
    return False


def load_model(model: str | Path | nn.Module | None, config: GBLMConfig, **load_kwargs: Any) -> LoadedModel:
    tokenizer = load_kwargs.pop("tokenizer", None)
    if isinstance(model, nn.Module):
        if get_adapter(model).library == "timm":  # the timm loader binds the config and resolves preprocessing
            from .adapters.timm_vit import load_timm_model

            return load_timm_model(model, config, **load_kwargs)
        return LoadedModel(
            model,
            get_adapter(model),
            tokenizer,
            load_kwargs.pop("model_id", None)
            or getattr(getattr(model, "config", None), "_name_or_path", None)
            or None,
        )
    if model is None:
        from .assets import DEFAULT_MODEL_ID, default_model_path

        source, model_id = str(default_model_path()), DEFAULT_MODEL_ID
    else:
        source = model_id = str(model)
    if _is_timm_source(source):
        from .adapters.timm_vit import load_timm_model

        return load_timm_model(source, config, **load_kwargs)
    path = Path(source).expanduser()
    if not path.exists() and _looks_local(source):
        raise FileNotFoundError(f"model path {source!r} does not exist")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    trust = config.trust_remote_code
    try:
        hf_config = AutoConfig.from_pretrained(source, trust_remote_code=trust)
    except OSError as err:
        raise OSError(f"cannot load a model config from {source!r}: {err}") from err
    check_model_type(getattr(hf_config, "model_type", None) or type(hf_config).__name__)  # before loading weights
    dtype = "auto" if config.dtype == "auto" else DTYPES[config.dtype]
    loaded = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=trust, **load_kwargs)
    if tokenizer is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust)
        except (OSError, ValueError) as err:
            logger.warning("No tokenizer loaded from %s (%s): pass calibration tokens to prune()", source, err)
    return LoadedModel(loaded, get_adapter(loaded), tokenizer, model_id)
