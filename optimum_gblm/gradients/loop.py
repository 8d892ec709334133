"""`collect_gradients`: the per-sample gradient pass, from a plain loop, a dataloader, a Trainer or a custom step."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..configuration import GBLMConfig
from ..utils import (
    DTYPES,
    forwards_replaced,
    model_device,
    peak_rss_gib,
    sample_tensors,
    samples_fingerprint,
    tensor_fingerprint,
)
from .accumulation import GradientAccumulation, required_norms
from .cache import (
    calibration_settings,
    check_cache,
    load_cache,
    model_fingerprint,
    save_cache,
)
from .collector import GradientCollector, per_sample_backward
from .distributed import (
    all_reduce_accumulation,
    barrier,
    check_cache_distribution,
    check_world_size,
    process_group,
)

logger = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Any], torch.Tensor]


def split_batch(batch: Any) -> Iterator[Any]:
    """Yield single-sample views of a batch (dict, tensor, or tuple of tensors), so each backward sees one sample."""
    if isinstance(batch, torch.Tensor):
        for i in range(batch.shape[0]):
            yield batch[i : i + 1]
        return
    if isinstance(batch, dict) or hasattr(batch, "keys"):
        sizes = {v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor) and v.dim() > 0}
        if len(sizes) != 1:
            raise ValueError(f"cannot split a batch whose tensors disagree on the batch size: {sorted(sizes)}")
        for i in range(sizes.pop()):
            yield {k: v[i : i + 1] if isinstance(v, torch.Tensor) and v.dim() > 0 else v for k, v in batch.items()}
        return
    if isinstance(batch, (tuple, list)):
        for i in range(batch[0].shape[0]):
            yield type(batch)(x[i : i + 1] for x in batch)
        return
    raise TypeError(f"unsupported batch type {type(batch).__name__}: use a tensor, a dict of tensors or a tuple")


def default_loss() -> LossFn:
    """The default step: `model(**sample).loss` for dict batches (which need labels); for plain tensors, the model
    adapter's loss (causal LMs: next-token loss over the whole window). The adapter is looked up once, at the first
    tensor sample, not per sample (a ViT adapter reads the model's data config when it is built)."""
    adapters: dict[int, Any] = {}

    def step(model: nn.Module, sample: Any) -> torch.Tensor:
        if isinstance(sample, dict):
            if "labels" not in sample:
                raise ValueError(
                    f"a calibration batch has no 'labels' (keys: {sorted(sample)}): gradients need a loss; add "
                    "labels (for causal LMs, labels = input_ids) or pass train_step="
                )
            device = model_device(model)
            return model(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in sample.items()}).loss
        if id(model) not in adapters:
            from ..adapters import get_adapter

            adapters[id(model)] = get_adapter(model)
        return adapters[id(model)].loss(model, sample)

    return step


def _peak_memory_text(device: torch.device) -> str:
    if device.type == "cuda":
        return f"peak CUDA memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    return f"peak process RSS {peak_rss_gib():.2f} GiB"


def checkpointed_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks whose activations gradient checkpointing recomputes: transformers' checkpointable layers (decoder
    layers), else a timm-style `blocks` container. Raises when the model has neither."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # pragma: no cover - transformers without the layer class
        GradientCheckpointingLayer = ()  # noqa: N806
    blocks = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not blocks and isinstance(getattr(model, "blocks", None), (nn.Sequential, nn.ModuleList)):
        blocks = list(model.blocks)
    if not blocks:
        raise ValueError(
            f"gradient checkpointing needs a transformers model with checkpointable layers or a timm-style model "
            f"with `blocks`; {type(model).__name__} has neither: collect without gradient_checkpointing"
        )
    return blocks


@contextlib.contextmanager
def _gradient_checkpointing(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Recompute each block's activations in the backward instead of keeping them: the saved activations of the
    whole model shrink to each block's input. transformers checkpoints a layer only in training mode, and the pass
    runs in eval mode (no dropout), so each block's `forward` is wrapped here, for this pass only, in a
    non-reentrant `torch.utils.checkpoint` (the frozen inputs need no grad; the RNG state is replayed). The
    gradients are the same values (tests/test_checkpointing.py)."""
    if not enabled:
        yield
        return
    from torch.utils.checkpoint import checkpoint

    # Blocks transformers already checkpoints (a Trainer's model in train mode) are left alone.
    blocks = [
        b for b in checkpointed_blocks(model) if not (b.training and getattr(b, "gradient_checkpointing", False))
    ]
    with forwards_replaced(blocks, [functools.partial(checkpoint, b.forward, use_reentrant=False) for b in blocks]):
        yield


def run_collection(
    model: nn.Module,
    targets: dict[str, nn.Module],
    samples: Iterable[Any],
    loss_fn: LossFn,
    config: GBLMConfig,
    *,
    total: int | None = None,
    norms: tuple[str, ...] | None = None,
    cache_path: str | Path | None = None,
    cache_metadata: dict[str, str] | None = None,
    legacy_metadata: Callable[[], dict[str, str]] | None = None,
    overwrite: bool = False,
    checkpoint_every: int = 0,
    offload_accumulators: bool = False,
    train_mode: bool = False,
    gradient_checkpointing: bool = False,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
    tokens_fn: Callable[[Any], int] | None = None,
    progress: bool = True,
) -> GradientAccumulation:
    """The shared loop. Reuses a complete cache or resumes a partial one when its metadata match (a mismatch is
    refused, the file left untouched), unless `overwrite`: then the file is replaced (at the first checkpoint or at
    the end, atomically). `legacy_metadata` gives the fingerprints that caches written before fingerprint version 2
    recorded. Under torchrun / accelerate launch each process folds its shard of the samples and the accumulators are
    summed at the end (gradients/distributed.py); only rank 0 writes the cache. Returns the accumulators."""
    norms = norms or required_norms(config)
    device = model_device(model)
    group = process_group(device)
    if autocast is None:
        dtype = DTYPES[config.gradient_dtype]
        use_autocast = dtype != torch.float32 and next(model.parameters()).dtype == torch.float32
        autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if use_autocast else contextlib.nullcontext
    if config.blockwise_gradients:
        from .blockwise import blockwise_collection  # imports the pipelines: only on this path

        return blockwise_collection(
            model, targets, samples, loss_fn, config, norms, autocast, cache=cache_path is not None,
            gradient_checkpointing=gradient_checkpointing,
            distributed=group.distributed, offload_accumulators=offload_accumulators, train_mode=train_mode,
            progress=progress,
        )  # fmt: skip
    if group.distributed:
        if checkpoint_every:
            raise ValueError("checkpoint_every is not supported with several processes: the cache is written once")
        samples = list(samples) if total is None else samples
        total = len(samples) if total is None else total
        check_world_size(group, total)
    metadata = {**(cache_metadata or {}), "scale": str(config.gradient_scale), "gradient_dtype": config.gradient_dtype}
    metadata.update(group.metadata(total or 0))
    state: GradientAccumulation | None = None
    skip = 0
    if cache_path is not None and Path(cache_path).exists() and not overwrite:
        meta = check_cache(cache_path, metadata, norms, legacy_metadata)
        check_cache_distribution(cache_path, meta, group, total or 0)
        state, meta = load_cache(cache_path, "cpu" if offload_accumulators else device)
        if meta.get("complete") == "true":
            logger.info("Reusing complete gradient cache %s (%d samples)", cache_path, state.nsamples)
            return state
        skip = state.nsamples
        logger.info("Resuming gradient collection from %s after %d samples", cache_path, skip)

    fp16 = config.gradient_dtype == "float16"
    collector = GradientCollector(
        model,
        targets,
        norms=norms,
        scale=config.gradient_scale,
        accumulate_device="cpu" if offload_accumulators else None,
        train_mode=train_mode,
        defer_fold=fp16,
        state=state,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start, tokens, done = time.perf_counter(), 0, 0
    bar = tqdm(total=total, desc="gradients", unit="sample", disable=not progress or not group.is_main)
    with collector, _gradient_checkpointing(model, gradient_checkpointing):
        for index, sample in group.shard(enumerate(samples)):  # index: the sample's global index
            if index < skip:
                bar.update(1)
                continue
            with autocast():
                per_sample_backward(collector, lambda s=sample: loss_fn(model, s), index, fp16_scaling=fp16)
            done += 1
            tokens += tokens_fn(sample) if tokens_fn else 0
            elapsed = max(time.perf_counter() - start, 1e-9)
            bar.update(1)
            rates = {"samples_s": f"{done / elapsed:.2f}"}
            if tokens:  # samples without token ids (images from a dataloader) show samples/s only
                rates["tokens_s"] = f"{tokens / elapsed:.0f}"
            bar.set_postfix(rates)
            if cache_path is not None and checkpoint_every and collector.state.nsamples % checkpoint_every == 0:
                collector.check_finite()  # a checkpoint never stores a non-finite sum
                save_cache(cache_path, collector.state, metadata, complete=False)
    bar.close()
    result = all_reduce_accumulation(collector.state, group)
    if result.nsamples == 0:
        raise ValueError("the calibration data yielded no samples: the dataloader is empty")
    if "nsamples_target" in metadata and str(result.nsamples) != metadata["nsamples_target"]:
        logger.warning("collected %d samples, expected %s", result.nsamples, metadata["nsamples_target"])
    if cache_path is not None and group.is_main:
        save_cache(cache_path, result, metadata, complete=True)
    barrier(group)  # the other processes return once the cache exists
    logger.info(
        "Gradients: %d samples in %.1f s (%s)", result.nsamples, time.perf_counter() - start, _peak_memory_text(device)
    )
    return result


def collect_gradients(
    model: nn.Module | None = None,
    config: GBLMConfig | None = None,
    *,
    dataloader: Iterable[Any] | None = None,
    trainer: Any | None = None,
    train_step: LossFn | None = None,
    targets: dict[str, nn.Module] | None = None,
    cache_path: str | Path | None = None,
    overwrite: bool = False,
    checkpoint_every: int = 0,
    offload_accumulators: bool = False,
    train_mode: bool = False,
    gradient_checkpointing: bool = False,
    progress: bool = True,
) -> GradientAccumulation:
    """Collect per-sample gradient accumulations of the targeted linears.

    - `dataloader=`: batches (dicts with labels, tensors or tuples) split into single samples;
      the loss is `train_step(model, sample)` or `model(**sample).loss`.
    - `trainer=`: a `transformers.Trainer`; its train dataloader, `compute_loss`, device placement, mixed
      precision and gradient-checkpointing settings are reused; no optimizer is created, no weight changes.
    Targets default to the model adapter's targeted linears filtered by `config.targets` / `config.ignore`.
    `cache_path`: a complete matching cache is reused, a partial one resumed, anything else refused (unless
    `overwrite`). The cache is keyed by the model and the calibration tokens (or images and labels), in any order
    and whatever the container, so `GBLMPruner.prune(calibration=the same samples, gradients=cache_path)` reuses it.
    """
    config = config or GBLMConfig()
    if trainer is not None:
        from .trainer import trainer_collection_args  # transformers is imported only on this path

        if model is not None and model is not trainer.model:
            raise ValueError("collect_gradients(model, trainer=...): the model must be trainer.model (or omit it)")
        model, dataloader, train_step, autocast, gradient_checkpointing = trainer_collection_args(
            trainer, gradient_checkpointing
        )
    else:
        autocast = None
    if model is None:
        raise ValueError("collect_gradients needs a model (or trainer=)")
    if dataloader is None:
        raise ValueError("collect_gradients needs dataloader= or trainer= (or use GBLMPruner.collect_gradients())")
    adapter = _adapter_or_none(model)
    if targets is None:
        if adapter is None:
            from ..adapters import get_adapter

            adapter = get_adapter(model)  # raises UnsupportedModel, naming what is supported
        targets = adapter.target_linears(model, config.targets, config.ignore)
    loss_fn = train_step or default_loss()
    samples: Iterable[Any] = (s for batch in dataloader for s in split_batch(batch))
    metadata: dict[str, str] = {}
    legacy = None
    total = None
    if cache_path is not None:
        # The cache must identify its calibration set, so materialise the (small) per-sample list once.
        samples = list(samples)
        total = len(samples)
        key = adapter.fingerprint_tensors if adapter is not None else sample_tensors
        metadata = {
            "model_fingerprint": model_fingerprint(model, targets),
            "calibration_fingerprint": samples_fingerprint(key(s) for s in samples),
            "nsamples_target": str(total),
            **calibration_settings("trainer" if trainer is not None else "dataloader", total),
        }
        legacy = _legacy_metadata(model, targets, samples)
    return run_collection(
        model,
        targets,
        samples,
        loss_fn,
        config,
        total=total,
        cache_path=cache_path,
        cache_metadata=metadata,
        legacy_metadata=legacy,
        overwrite=overwrite,
        checkpoint_every=checkpoint_every,
        offload_accumulators=offload_accumulators,
        train_mode=train_mode,
        gradient_checkpointing=gradient_checkpointing,
        autocast=autocast,
        tokens_fn=sample_token_count,  # the Trainer's / dataloader's samples: dicts, tensors or tuples
        progress=progress,
    )


def sample_token_count(sample: Any) -> int:
    """Tokens in one dataloader / Trainer sample, for the progress bar: its input_ids (the attended ones when it has
    an attention mask), else the elements of an integer tensor (first of a tuple); 0 when it holds no token ids."""
    if hasattr(sample, "keys"):
        mask = sample.get("attention_mask")
        if mask is not None:
            return int(torch.as_tensor(mask).sum())
        sample = sample.get("input_ids")
    if isinstance(sample, (tuple, list)) and sample:
        sample = sample[0]
    if isinstance(sample, torch.Tensor) and not sample.is_floating_point():
        return int(sample.numel())
    return 0


def _adapter_or_none(model: nn.Module) -> Any:
    from ..adapters import get_adapter
    from ..adapters.registry import UnsupportedModel

    try:
        return get_adapter(model)
    except UnsupportedModel:
        return None  # a custom model with its own targets and train_step


def _legacy_metadata(model: nn.Module, targets: dict[str, nn.Module], samples: list[Any]) -> Callable[[], dict]:
    """The fingerprints of caches written before fingerprint version 2: every tensor of every sample, in order."""

    def tensors(sample: Any) -> Iterable[Any]:
        return (
            sample.values() if isinstance(sample, dict) else [sample] if isinstance(sample, torch.Tensor) else sample
        )

    return lambda: {
        "model_fingerprint": model_fingerprint(model, targets, legacy=True),
        "calibration_fingerprint": tensor_fingerprint(
            *(t for s in samples for t in tensors(s) if isinstance(t, torch.Tensor))
        ),
    }
