"""LLaMA-shaped decoder LLMs (LLaMA 1/2/3, Mistral, Qwen2/3): one adapter, families as data."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import ModelAdapter

# model_type -> (block path, targeted linears relative to a block). Families share LLaMA's layout.
LLAMA_LINEARS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
DECODER_FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "llama": ("model.layers", LLAMA_LINEARS),
    "mistral": ("model.layers", LLAMA_LINEARS),
    "qwen2": ("model.layers", LLAMA_LINEARS),
    "qwen3": ("model.layers", LLAMA_LINEARS),
}


class DecoderAdapter(ModelAdapter):
    name = "decoder"
    library = "transformers"
    block_path = "model.layers"
    block_linears = LLAMA_LINEARS

    def __init__(self, model_type: str = "llama") -> None:
        self.model_type = model_type
        self.block_path, self.block_linears = DECODER_FAMILIES[model_type]

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        config = getattr(model, "config", None)
        return getattr(config, "model_type", None) in DECODER_FAMILIES and hasattr(model, "lm_head")

    @staticmethod
    def _ids(model: nn.Module, sample: Any) -> torch.Tensor:
        ids = sample["input_ids"] if isinstance(sample, dict) else sample
        ids = ids if ids.dim() == 2 else ids.unsqueeze(0)
        return ids.to(model.get_input_embeddings().weight.device)

    def forward(self, model: nn.Module, sample: Any) -> Any:
        return model(input_ids=self._ids(model, sample), use_cache=False)

    def loss(self, model: nn.Module, sample: Any) -> torch.Tensor:
        # All next-token predictions of the window, no label masking (ALGORITHMS.md section 2).
        ids = self._ids(model, sample)
        return model(input_ids=ids, labels=ids, use_cache=False).loss

    def sample_tokens(self, sample: Any) -> int:
        ids = sample["input_ids"] if isinstance(sample, dict) else sample
        return int(ids.shape[-1])

    # -- evaluation -----------------------------------------------------------------------------------------------
    metric_name = "perplexity"

    def evaluate(
        self,
        model: nn.Module,
        pruner: Any,
        seqlen: int | None = None,
        max_windows: int | None = None,
        source: str = "offline-corpus",
        progress: bool = True,
    ) -> float:
        from ..evaluation import evaluation_stream, perplexity

        if pruner.tokenizer is None:
            raise ValueError("perplexity needs a tokenizer")
        cache = pruner.__dict__.setdefault("_eval_streams", {})
        if source not in cache:
            cache[source] = evaluation_stream(pruner.tokenizer, source)
        return perplexity(model, cache[source], seqlen or pruner.config.seqlen, max_windows, progress)

    # -- saving ---------------------------------------------------------------------------------------------------
    def save(self, model: nn.Module, folder: Any, pruner: Any) -> None:
        """A plain transformers checkpoint (safetensors, exact zeros, no quantization_config) + tokenizer."""
        model.save_pretrained(folder)
        if pruner.tokenizer is not None:
            pruner.tokenizer.save_pretrained(folder)
