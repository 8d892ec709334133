"""One structured prune: a single pass of the dense model collects the fluctuation statistics of every block (so
every block is scored on dense inputs, and the adaptive mode can rank all blocks at once), the method scores heads and
channels, `plan.select` decides the widths, and `surgery` removes them. The pruning map records what was kept.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..masks import NonFiniteScoresError, check_finite
from ..methods import get_method
from ..methods.structured_units import LayerEvidence
from ..pruning_map import STRUCTURED, PruningMap, Stage, TargetRecord, prune_settings
from ..statistics import InputStatistics
from ..utils import inference_mode
from .plan import LINEARS, BlockShape, Kept, check_structured, select
from .surgery import STRUCTURE_KEY, describe_structure, shrink_block

logger = logging.getLogger(__name__)

# input site -> the linear whose input it is
SITES = {
    "self_attn.input": "self_attn.q_proj",
    "self_attn.o_proj": "self_attn.o_proj",
    "mlp.input": "mlp.gate_proj",
    "mlp.down_proj": "mlp.down_proj",
}


def collect_statistics(
    model: nn.Module, adapter: Any, samples: Any, progress: bool = False, influence: bool = False
) -> tuple[list[dict[str, InputStatistics]], list[float]]:
    """Fluctuation statistics of the four input sites of every block, from forward passes of the dense model; with
    `influence`, each block's mean 1 - cos(input, output) over tokens (how much it changes the residual stream)."""
    blocks = adapter.blocks(model)
    stats = [
        {site: InputStatistics(block.get_submodule(lin).in_features, "fluctuation") for site, lin in SITES.items()}
        for block in blocks
    ]
    change = [0.0] * len(blocks)
    tokens = [0]
    handles = []

    def site_hook(target: InputStatistics):
        return lambda module, args: target.add_batch(args[0])

    def block_hook(index: int):
        def hook(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, (tuple, list)) else output
            cos = torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1)
            change[index] += float((1 - cos).sum())
            if index == 0:
                tokens[0] += cos.numel()

        return hook

    for index, (block, site_stats) in enumerate(zip(blocks, stats)):
        for site, linear in SITES.items():
            handles.append(block.get_submodule(linear).register_forward_pre_hook(site_hook(site_stats[site])))
        if influence:
            handles.append(block.register_forward_hook(block_hook(index), with_kwargs=True))
    try:
        with inference_mode(model):
            for sample in tqdm(samples, desc="structured: statistics", disable=not progress):
                adapter.forward(model, sample)
    finally:
        for handle in handles:
            handle.remove()
    return stats, [c / max(tokens[0], 1) for c in change]


def _named(check: Any, where: str, method: str) -> None:
    """Run a finiteness check, naming the layer and method in its error (the kernels only see tensors)."""
    try:
        check()
    except NonFiniteScoresError as err:
        raise NonFiniteScoresError(f"{where} (method {method!r}): {err}") from None


def unit_scores(
    model: nn.Module,
    adapter: Any,
    method: Any,
    args: Any,
    stats: list[dict[str, InputStatistics]],
    gradients: Mapping[str, torch.Tensor] | None,
    shapes: list[BlockShape],
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The method's (head, channel) scores of every block."""
    scores = []
    for index, (block, site_stats, shape) in enumerate(zip(adapter.blocks(model), stats, shapes)):
        prefix = f"{adapter.block_path}.{index}."
        grads = None if gradients is None else {name: gradients[prefix + name] for name in LINEARS}
        weights = {name: block.get_submodule(name).weight.data for name in LINEARS}
        for name, weight in weights.items():  # a NaN weight would make every unit score of its block NaN
            _named(lambda w=weight: check_finite(w, "weights"), f"{prefix}{name}", method.name)
        evidence = LayerEvidence(weights, site_stats, shape.head_dim, grads)
        block_scores = tuple(s.detach().double().cpu() for s in method.unit_scores(evidence, args))
        for kind, values in zip(("head", "channel"), block_scores):
            _named(lambda v=values, k=kind: check_finite(v, f"{k} scores"), prefix.rstrip("."), method.name)
        scores.append(block_scores)
    return scores


def apply_plan(
    model: nn.Module,
    adapter: Any,
    shapes: list[BlockShape],
    kept: list[Kept],
    means: list[dict[str, torch.Tensor]] | None,
    fraction: float,
) -> PruningMap:
    """Remove what `kept` does not keep, rewrite the config, and return the pruning map (pattern "structured";
    per target the original shape, the removed fraction of its weights and the kept indices)."""
    pruning_map = PruningMap(pattern=STRUCTURED)
    compensated = means is not None
    for index, (block, shape, keep) in enumerate(zip(adapter.blocks(model), shapes, kept)):
        shrink_block(
            block,
            shape,
            keep,
            None if means is None else means[index],
            attention_bias=compensated or bool(getattr(model.config, "attention_bias", False)),
            mlp_bias=compensated or bool(getattr(model.config, "mlp_bias", False)),
        )
        prefix = f"{adapter.block_path}.{index}."
        hd = [shape.head_dim]
        by_name = {
            "self_attn.q_proj": ((shape.heads * shape.head_dim, shape.hidden), {"heads": keep.heads, "head_dim": hd}),
            "self_attn.k_proj": (
                (shape.kv_heads * shape.head_dim, shape.hidden),
                {"kv_heads": keep.kv_heads, "head_dim": hd},
            ),
            "self_attn.v_proj": (
                (shape.kv_heads * shape.head_dim, shape.hidden),
                {"kv_heads": keep.kv_heads, "head_dim": hd},
            ),
            "self_attn.o_proj": ((shape.hidden, shape.heads * shape.head_dim), {"heads": keep.heads, "head_dim": hd}),
            "mlp.gate_proj": ((shape.intermediate, shape.hidden), {"channels": keep.channels}),
            "mlp.up_proj": ((shape.intermediate, shape.hidden), {"channels": keep.channels}),
            "mlp.down_proj": ((shape.hidden, shape.intermediate), {"channels": keep.channels}),
        }
        for name, (original, kept_units) in by_name.items():
            now = block.get_submodule(name).weight
            pruning_map.targets[prefix + name] = TargetRecord(
                shape=original,
                pattern=STRUCTURED,
                target_sparsity=fraction,
                achieved_sparsity=1.0 - now.numel() / (original[0] * original[1]),
                pattern_ok=True,
                input_site=None,
                kept=kept_units,
            )
    uniform = describe_structure(
        model.config,
        [k.widths for k in kept],
        shapes[0].head_dim,
        {"attention_bias": compensated, "mlp_bias": compensated},
    )
    logger.info("structured prune: %s widths", "uniform" if uniform else "per-block")
    return pruning_map


def prune_structured(
    model: nn.Module,
    adapter: Any,
    config: Any,
    calibration: Any,
    gradients: Mapping[str, torch.Tensor] | None = None,
    progress: bool = True,
) -> PruningMap:
    """Score, select and remove heads / channels of every block; the model is changed in place."""
    method, args = get_method(config.method), config.args
    shapes = check_structured(model, adapter, config, args)
    dense_parameters = count_parameters(model)
    stats, _ = collect_statistics(model, adapter, calibration, progress)
    scores = unit_scores(model, adapter, method, args, stats, gradients, shapes)
    kept = select(shapes, scores, config.sparsity, args, method.ranking)
    means = None
    if args.bias_compensation:
        means = [{k: s[k].channel_mean() for k in ("self_attn.o_proj", "mlp.down_proj")} for s in stats]
    pruning_map = apply_plan(model, adapter, shapes, kept, means, config.sparsity)
    for site_stats in stats:
        for s in site_stats.values():
            s.free()
    structure = {
        "parameters": count_parameters(model),
        "dense_parameters": dense_parameters,
        "widths": "per-block" if hasattr(model.config, STRUCTURE_KEY) else "uniform",
        "layers": [k.widths for k in kept],
    }
    pruning_map.stages.append(
        # the config's mask pattern is not used: what was removed is whole heads and channels
        Stage(
            "prune", config.method, {**prune_settings(config.to_dict()), "pattern": STRUCTURED, "structure": structure}
        )
    )
    return pruning_map


def count_parameters(model: nn.Module) -> int:
    """Parameters of the model, tied ones counted once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
