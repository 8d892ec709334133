"""LLaMA-shaped decoder LLMs (LLaMA 1/2/3, Mistral, Qwen2/3): one adapter, families as data."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..utils import DTYPES
from .base import LoadedModel, ModelAdapter
from .registry import UnsupportedModel, register_adapter

logger = logging.getLogger(__name__)

LLAMA_LINEARS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
# q/k/v read the attention input, gate/up the MLP input: one input site each (one Hessian instead of three).
LLAMA_SHARED_INPUTS = {
    "self_attn.q_proj": "self_attn.input",
    "self_attn.k_proj": "self_attn.input",
    "self_attn.v_proj": "self_attn.input",
    "mlp.gate_proj": "mlp.input",
    "mlp.up_proj": "mlp.input",
}
# model_type -> (block path, targeted linears relative to a block). Families share LLaMA's layout.
DECODER_FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "llama": ("model.layers", LLAMA_LINEARS),
    "mistral": ("model.layers", LLAMA_LINEARS),
    "qwen2": ("model.layers", LLAMA_LINEARS),
    "qwen3": ("model.layers", LLAMA_LINEARS),
}


def _looks_local(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or Path(name).suffix in (".safetensors", ".bin", ".pth")


def _check_path(source: str) -> None:
    if not Path(source).expanduser().exists() and _looks_local(source):
        raise FileNotFoundError(f"model path {source!r} does not exist")


@register_adapter
class DecoderAdapter(ModelAdapter):
    name = "decoder"
    library = "transformers"
    metric_name = "perplexity"
    claims_any_source = True  # names no other adapter claims are tried as transformers models
    block_path = "model.layers"
    block_linears = LLAMA_LINEARS
    shared_inputs = LLAMA_SHARED_INPUTS

    def __init__(self, model_type: str = "llama") -> None:
        self.model_type = model_type
        self.block_path, self.block_linears = DECODER_FAMILIES[model_type]

    # -- which models and sources -------------------------------------------------------------------------------
    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        config = getattr(model, "config", None)
        return getattr(config, "model_type", None) in DECODER_FAMILIES and hasattr(model, "lm_head")

    @classmethod
    def architectures(cls) -> list[str]:
        return [f"{t} (transformers)" for t in DECODER_FAMILIES]

    @classmethod
    def claims_source(cls, source: str) -> bool:
        return False  # but it is the fallback (claims_any_source)

    @classmethod
    def check_model_type(cls, model_type: str) -> None:
        if model_type not in DECODER_FAMILIES:
            raise UnsupportedModel(model_type)

    @classmethod
    def for_model(cls, model: nn.Module) -> DecoderAdapter:
        return cls(model.config.model_type)

    @classmethod
    def wrap(cls, model: nn.Module, config: Any, **load_kwargs: Any) -> LoadedModel:
        model_id = load_kwargs.get("model_id") or getattr(getattr(model, "config", None), "_name_or_path", None)
        return LoadedModel(model, cls.for_model(model), load_kwargs.get("tokenizer"), model_id or None)

    @classmethod
    def skeleton(cls, source: str, config: Any) -> nn.Module | None:
        from transformers import AutoConfig, AutoModelForCausalLM

        _check_path(source)
        trust = config.trust_remote_code
        try:
            hf_config = AutoConfig.from_pretrained(source, trust_remote_code=trust, local_files_only=True)
        except (OSError, ValueError) as err:  # not local, not cached: only a download would tell
            logger.debug("no local config for %s (%s): structure not checked", source, err)
            return None
        cls.check_model_type(getattr(hf_config, "model_type", None) or type(hf_config).__name__)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(hf_config, trust_remote_code=trust)

    @classmethod
    def load(cls, source: str, config: Any, **load_kwargs: Any) -> LoadedModel:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        tokenizer = load_kwargs.pop("tokenizer", None)
        model_id = load_kwargs.pop("model_id", None) or source
        _check_path(source)
        trust = config.trust_remote_code
        try:
            hf_config = AutoConfig.from_pretrained(source, trust_remote_code=trust)
        except OSError as err:
            raise OSError(f"cannot load a model config from {source!r}: {err}") from err
        cls.check_model_type(getattr(hf_config, "model_type", None) or type(hf_config).__name__)  # before weights
        dtype = "auto" if config.dtype == "auto" else DTYPES[config.dtype]
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=trust, **load_kwargs)
        if tokenizer is None:
            try:
                tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust)
            except (OSError, ValueError) as err:
                logger.warning("No tokenizer loaded from %s (%s): pass calibration tokens to prune()", source, err)
        return LoadedModel(model, cls.for_model(model), tokenizer, model_id)

    # -- calibration samples --------------------------------------------------------------------------------------
    @staticmethod
    def _ids(model: nn.Module, sample: Any) -> torch.Tensor:
        ids = sample["input_ids"] if isinstance(sample, dict) else sample
        ids = ids if ids.dim() == 2 else ids.unsqueeze(0)
        return ids.to(model.get_input_embeddings().weight.device)

    def forward(self, model: nn.Module, sample: Any) -> Any:
        return model(input_ids=self._ids(model, sample), use_cache=False)

    def loss(self, model: nn.Module, sample: Any) -> torch.Tensor:
        # All next-token predictions of the window, no label masking (docs/semantics.md#3-gradients).
        ids = self._ids(model, sample)
        return model(input_ids=ids, labels=ids, use_cache=False).loss

    def sample_tokens(self, sample: Any) -> int:
        ids = sample["input_ids"] if isinstance(sample, dict) else sample
        return int(ids.shape[-1])

    def build_calibration(
        self, config: Any, tokenizer: Any = None, preprocessing: dict[str, Any] | None = None
    ) -> Any:
        from ..data.text import build_token_calibration

        if tokenizer is None:
            raise ValueError("this model has no tokenizer: pass calibration tokens to prune(calibration=...)")
        return build_token_calibration(
            tokenizer,
            config.calibration,
            config.num_samples,
            config.seqlen,
            config.seed,
            config.calibration_text_column,
        )

    def make_calibration(self, data: Any, config: Any) -> Any:
        from ..data.text import as_token_calibration

        return as_token_calibration(data)

    def fingerprint_tensors(self, sample: Any) -> tuple[torch.Tensor, ...]:
        from ..data.text import token_fingerprint_tensors

        if isinstance(sample, torch.Tensor):
            return token_fingerprint_tensors(sample)
        if hasattr(sample, "keys") and "input_ids" in sample:
            return token_fingerprint_tensors(sample["input_ids"])
        return super().fingerprint_tensors(sample)

    # -- saving ---------------------------------------------------------------------------------------------------
    def save(self, model: nn.Module, folder: Any, tokenizer: Any = None) -> None:
        """A plain transformers checkpoint (safetensors, exact zeros, no quantization_config) + tokenizer."""
        model.save_pretrained(folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
