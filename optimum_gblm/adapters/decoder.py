"""Decoder LLMs: one generic adapter for any transformers causal LM whose decoder layers can be found.

The layers and prune targets come from the model itself (adapters/discovery.py); the family table
(adapters/families.py) holds defaults and exceptions, not a gate. Mixture-of-experts layers with fused 3-D expert
parameters are pruned per expert with the statistics of the tokens routed to it (adapters/experts.py).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..targets import PruneTarget
from ..utils import DTYPES, looks_like_local_path
from .base import LoadedModel, ModelAdapter
from .discovery import check_causal_decoder, decoder_block_targets, find_decoder_layers, layer_has_targets
from .experts import MIN_EXPERT_TOKENS
from .families import DECODER_FAMILIES
from .pruned_checkpoint import NotAModel, is_per_layer, load_pruned, read_config
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
# q/k/v read the attention input, gate/up the MLP input: one input site each (one Hessian instead of three). The
# generic rule (discovery.SHARED_INPUT_GROUPS) declares the same sites; kept for adapters that extend this one.
LLAMA_SHARED_INPUTS = {
    "self_attn.q_proj": "self_attn.input",
    "self_attn.k_proj": "self_attn.input",
    "self_attn.v_proj": "self_attn.input",
    "mlp.gate_proj": "mlp.input",
    "mlp.up_proj": "mlp.input",
}


def _check_path(source: str) -> None:
    if looks_like_local_path(source) and not Path(source).expanduser().exists():
        raise FileNotFoundError(f"model path {source!r} does not exist")


@register_adapter
class DecoderAdapter(ModelAdapter):
    name = "decoder"
    library = "transformers"
    metric_name = "perplexity"
    claims_any_source = True  # names no other adapter claims are tried as transformers models
    block_path = "model.layers"
    block_linears = LLAMA_LINEARS  # informative: the generic rule selects every non-router linear of a layer
    shared_inputs: dict[str, str] = {}  # explicit block-relative site declarations (override the generic rule)
    min_expert_tokens: int = MIN_EXPERT_TOKENS  # fewer routed calibration tokens: the expert is pruned by |W|

    def __init__(self, model_type: str = "llama", block_path: str = "model.layers") -> None:
        self.model_type = model_type
        self.block_path = block_path

    # -- which models and sources -------------------------------------------------------------------------------
    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        """Every transformers model: `for_model` then says precisely why one cannot be pruned."""
        config = getattr(model, "config", None)
        return getattr(config, "model_type", None) is not None and hasattr(model, "get_input_embeddings")

    @classmethod
    def architectures(cls) -> list[str]:
        return [f"{t} (transformers)" for t in DECODER_FAMILIES] + [
            "any other transformers causal LM whose decoder layers hold nn.Linear projections"
        ]

    @classmethod
    def claims_source(cls, source: str) -> bool:
        return False  # but it is the fallback (claims_any_source)

    @classmethod
    def for_model(cls, model: nn.Module) -> DecoderAdapter:
        """The adapter for a loaded (or meta-device) model; a clear error if it is no prunable causal decoder."""
        config = model.config
        check_causal_decoder(config, model)
        path = find_decoder_layers(model)
        layers = model.get_submodule(path)
        if not layer_has_targets(layers[0]):
            kind = getattr(config, "model_type", None) or type(model).__name__
            raise UnsupportedModel(
                kind,
                f"its decoder layers ({type(layers[0]).__name__}) hold no nn.Linear projection nor fused experts "
                "(e.g. transformers Conv1D layers are not supported)",
            )
        return cls(getattr(config, "model_type", "") or "", path)

    def block_targets(
        self, block: nn.Module, prefix: str, targets: list[str] | None = None, ignore: list[str] | None = None
    ) -> list[PruneTarget]:
        return decoder_block_targets(
            block, prefix, self.model_type, targets, ignore, self.shared_inputs, self.min_expert_tokens
        )

    @classmethod
    def wrap(cls, model: nn.Module, config: Any, **load_kwargs: Any) -> LoadedModel:
        model_id = load_kwargs.get("model_id") or getattr(getattr(model, "config", None), "_name_or_path", None)
        return LoadedModel(model, cls.for_model(model), load_kwargs.get("tokenizer"), model_id or None)

    @classmethod
    def skeleton(cls, source: str, config: Any) -> nn.Module | None:
        _check_path(source)
        trust = config.trust_remote_code
        try:
            hf_config = read_config(source, trust, local_files_only=True)
        except NotAModel:
            raise
        except (OSError, ValueError) as err:  # not local, not cached: only a download would tell
            logger.debug("no local config for %s (%s): structure not checked", source, err)
            return None
        return cls._checked_skeleton(hf_config, trust)

    @classmethod
    def _checked_skeleton(cls, hf_config: Any, trust: bool) -> nn.Module:
        """The model on the meta device (no memory, no weights), checked to be a prunable causal decoder."""
        from transformers import AutoModelForCausalLM

        check_causal_decoder(hf_config)
        try:
            with torch.device("meta"):
                skeleton = AutoModelForCausalLM.from_config(hf_config, trust_remote_code=trust)
        except ValueError as err:  # no causal-LM class for this config
            kind = getattr(hf_config, "model_type", None) or type(hf_config).__name__
            raise UnsupportedModel(kind, f"transformers has no causal-LM class for it ({err})") from err
        cls.for_model(skeleton)
        return skeleton

    @classmethod
    def load(cls, source: str, config: Any, **load_kwargs: Any) -> LoadedModel:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = load_kwargs.pop("tokenizer", None)
        model_id = load_kwargs.pop("model_id", None) or source
        _check_path(source)
        trust = config.trust_remote_code
        try:
            hf_config = read_config(source, trust)  # this project's per-layer checkpoints included
        except NotAModel:
            raise
        except OSError as err:
            raise OSError(f"cannot load a model config from {source!r}: {err}") from err
        cls._checked_skeleton(hf_config, trust)  # the structure is checked before any weight is loaded
        if is_per_layer(hf_config):  # per-layer widths: only load_pruned builds that model
            dtype = None if config.dtype == "auto" else DTYPES[config.dtype]
            model = load_pruned(source, dtype=dtype, **load_kwargs)
        else:
            dtype = "auto" if config.dtype == "auto" else DTYPES[config.dtype]
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=trust, **load_kwargs)
        if tokenizer is None:
            try:  # the config given: the tokenizer never reads a sealed config.json
                tokenizer = AutoTokenizer.from_pretrained(source, config=hf_config, trust_remote_code=trust)
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
