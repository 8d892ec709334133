"""Finding a decoder's layers and prune targets from the model itself (no per-family table needed).

Layers: the `layers` ModuleList of the model's decoder (`get_decoder()`: the base model of a causal LM, the language
model of a multimodal wrapper), else the one ModuleList of `_no_split_modules` blocks outside vision / audio
towers. Targets: every `nn.Linear` of a layer except routers, plus one target per expert of fused 3-D expert
parameters (adapters/experts.py). Sibling q/k/v and gate/up linears share an input site; the sequential pipeline
proves it at runtime.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from ..targets import PruneTarget, linear_target
from .experts import MIN_EXPERT_TOKENS, expert_parameters, expert_targets
from .families import ROUTER_NAMES, SHARED_INPUT_GROUPS, family
from .registry import UnsupportedModel

_TOWERS = ("vision", "audio", "visual", "image", "speech", "encoder")
_LAYER_LISTS = ("layers", "h", "blocks")


class NotACausalDecoder(UnsupportedModel):
    """An encoder-decoder or encoder-only model: an `UnsupportedModel` (a ValueError) with its own message, raised
    before any weight is loaded where possible."""

    def __init__(self, kind: str, message: str) -> None:
        ValueError.__init__(self, message)
        self.kind = kind


class DecoderNotFound(NotACausalDecoder):
    """The decoder layers of a model cannot be found (raised before any heavy work)."""


def check_causal_decoder(config: Any, model: nn.Module | None = None) -> None:
    """Refuse encoder-decoder and encoder-only models, from the config (and the model when given)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    model_type = getattr(config, "model_type", None) or type(config).__name__
    if getattr(config, "is_encoder_decoder", False):
        raise NotACausalDecoder(
            model_type,
            f"{model_type!r} is an encoder-decoder model: optimum-gblm prunes decoder-only causal LMs "
            "(LLaMA, Mistral, Qwen, Gemma, Phi-3, Mixtral, ...)",
        )
    encoder_only = model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False)
    if encoder_only or (model is not None and hasattr(model, "can_generate") and not model.can_generate()):
        kind = type(model).__name__ if model is not None else model_type
        raise NotACausalDecoder(
            model_type,
            f"{kind!r} ({model_type}) is not a causal LM (an encoder-only model or a head without generation): "
            "optimum-gblm prunes decoder-only causal LMs; load it with AutoModelForCausalLM",
        )


def find_decoder_layers(model: nn.Module) -> str:
    """The dotted path of the ModuleList of decoder layers, or `DecoderNotFound` saying what was looked for."""
    paths = {id(module): name for name, module in model.named_modules()}
    try:
        decoder = model.get_decoder() if callable(getattr(model, "get_decoder", None)) else None
    except (AttributeError, NotImplementedError, ValueError):  # a model without a decoder accessor
        decoder = None
    for attr in _LAYER_LISTS if isinstance(decoder, nn.Module) else ():
        layers = getattr(decoder, attr, None)
        if isinstance(layers, nn.ModuleList) and len(layers) and id(layers) in paths:
            return paths[id(layers)]
    blocks = set(getattr(model, "_no_split_modules", None) or ())
    candidates = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList)
        and len(module)
        and all(type(m).__name__ in blocks for m in module)
        and not any(t in name.lower() for t in _TOWERS)
    ]
    if len(candidates) == 1:
        return candidates[0]
    kind = getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__
    raise DecoderNotFound(
        kind,
        f"cannot find the decoder layers of {kind!r} ({type(model).__name__}): looked for a ModuleList "
        f"{' / '.join(_LAYER_LISTS)} on model.get_decoder(), then for one ModuleList of the model's "
        f"_no_split_modules ({', '.join(sorted(blocks)) or 'none declared'}) outside vision/audio towers"
        + (f"; found several: {', '.join(candidates)}" if candidates else "; found none"),
    )


def _generic_site(rel: str) -> str | None:
    parent, _, leaf = rel.rpartition(".")
    for group in SHARED_INPUT_GROUPS:
        if leaf in group:
            return f"{parent}.input" if parent else "input"
    return None


def _selected(fqn: str, rel: str, targets: list[str] | None, ignore: list[str] | None, skip: tuple) -> bool:
    if targets and "all-linear" not in targets:
        chosen = any(re.search(p, fqn) for p in targets)
    else:
        chosen = not any(re.search(p, rel) for p in skip)
    return chosen and not any(re.search(p, fqn) for p in ignore or ())


def decoder_block_targets(
    block: nn.Module,
    prefix: str,
    model_type: str | None,
    targets: list[str] | None = None,
    ignore: list[str] | None = None,
    declared_sites: dict[str, str] | None = None,
    min_expert_tokens: int = MIN_EXPERT_TOKENS,
) -> list[PruneTarget]:
    """The prune targets of one decoder layer, in module order. Routers are never targets, even when a regex names
    them; `declared_sites` (block-relative) overrides the generic and family input-site rules."""
    spec = family(model_type)
    sites = {**(spec.shared_inputs if spec else {}), **(declared_sites or {})}
    skip = spec.ignore if spec else ()
    modules = dict(block.named_modules())
    out: list[PruneTarget] = []
    for rel, module in modules.items():
        if rel.rpartition(".")[2] in ROUTER_NAMES:
            continue
        fqn = f"{prefix}.{rel}"
        if isinstance(module, nn.Linear):
            if _selected(fqn, rel, targets, ignore, skip):
                site = sites[rel] if rel in sites else _generic_site(rel)
                out.append(linear_target(fqn, module, f"{prefix}.{site}" if site else fqn))
        elif expert_parameters(module) is not None:
            parent = modules.get(rel.rpartition(".")[0]) if "." in rel else block
            for target in expert_targets(fqn, module, parent, min_expert_tokens):
                if _selected(target.name, rel, targets, ignore, skip):
                    out.append(target)
    return out


def layer_has_targets(block: nn.Module) -> bool:
    return any(isinstance(m, nn.Linear) or expert_parameters(m) is not None for m in block.modules())
