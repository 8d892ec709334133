"""The gradient phase of a prune, as functions over explicit state: the per-sample gradient pass over the calibration
set (with the fingerprints its cache is keyed by), the gradient-based allocation, and the two-pass variant that holds
one accumulator at a time. `GBLMPruner` calls these and keeps what they return."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .allocation import gradient_allocation
from .fields import OptionError
from .gradients import GradientAccumulation, gradient_passes, required_norms, run_collection
from .gradients.cache import calibration_settings, config_source, model_fingerprint, reusable_cache
from .targets import target_modules

if TYPE_CHECKING:
    from torch import nn

    from .adapters import ModelAdapter
    from .configuration import GBLMConfig
    from .pipelines import Placement

logger = logging.getLogger(__name__)


@dataclass
class GradientSubject:
    """The dense model a gradient pass runs on, and what describes it: its adapter, the config, where its weights
    live, and the calibration set (`from_config`: built from the config's source, so its seed applies)."""

    model: nn.Module
    adapter: ModelAdapter
    config: GBLMConfig
    placement: Placement
    calibration: Any
    from_config: bool = False

    def targets(self) -> list[Any]:
        return self.adapter.select_targets(self.model, self.config)


@dataclass
class GradientPhase:
    """What the gradient phase hands to pruning: the accumulation, the allocation when it was made between two
    passes (None otherwise), and the time of each step."""

    accumulation: GradientAccumulation
    allocation: dict[str, float] | None = None
    timings: dict[str, float] = field(default_factory=dict)


def cache_metadata(subject: GradientSubject) -> dict[str, str]:
    """What a gradient cache of this subject must match (fingerprints), and what explains a mismatch (settings)."""
    calib, cfg = subject.calibration, subject.config
    seqlen = calib.describe().get("seqlen")
    if subject.from_config:
        settings = calibration_settings(config_source(cfg.calibration), cfg.num_samples, seqlen, cfg.seed)
    else:
        settings = calibration_settings(getattr(calib, "source", "tensor"), len(calib), seqlen)
    modules = subject.placement.weights(target_modules(subject.targets()))
    return {
        "model_fingerprint": model_fingerprint(subject.model, modules),
        "calibration_fingerprint": calib.fingerprint(),
        "nsamples_target": str(len(calib)),
        **settings,
    }


def legacy_cache_metadata(subject: GradientSubject) -> dict[str, str]:
    """The fingerprints that caches written before fingerprint version 2 recorded."""
    modules = subject.placement.weights(target_modules(subject.targets()))
    legacy = {"model_fingerprint": model_fingerprint(subject.model, modules, legacy=True)}
    if hasattr(subject.calibration, "legacy_fingerprint"):
        legacy["calibration_fingerprint"] = subject.calibration.legacy_fingerprint()
    return legacy


def collect(
    subject: GradientSubject,
    cache_path: str | Path | None = None,
    checkpoint_every: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    norms: tuple[str, ...] | None = None,
    **kwargs: Any,
) -> tuple[GradientAccumulation, float]:
    """One per-sample gradient pass of the dense model over the subject's calibration set; returns the accumulation
    and the seconds it took. `cache_path`: a matching complete cache is reused, a partial one resumed, one made for
    anything else refused (the file is left untouched) unless `overwrite`. `norms`: the accumulations to keep
    (default: every one the config needs)."""
    cfg = subject.config
    if cache_path is not None and cfg.blockwise_gradients:
        raise OptionError(
            "blockwise_gradients",
            "{flag} cannot use a gradient cache (it keeps its sums on disk block by block): pass the cache without "
            "{name}, or leave the cache out",
        )
    if reusable_cache(cache_path, overwrite):  # read without running the model (a disk placement can do that)
        subject.placement.prepare(subject.model)
    else:
        subject.placement.prepare_whole(subject.model, "the gradient pass")
    start = time.perf_counter()
    accumulation = run_collection(
        subject.model,
        target_modules(subject.targets()),
        subject.calibration,
        subject.adapter.loss,
        cfg,
        total=len(subject.calibration),
        norms=norms or required_norms(cfg),
        cache_path=cache_path,
        cache_metadata=cache_metadata(subject),
        legacy_metadata=lambda: legacy_cache_metadata(subject),
        overwrite=overwrite,
        checkpoint_every=checkpoint_every,
        tokens_fn=subject.adapter.sample_tokens,
        progress=progress,
        **{"gradient_checkpointing": cfg.gradient_checkpointing, **kwargs},
    )
    return accumulation, time.perf_counter() - start


def allocate(subject: GradientSubject, accumulation: GradientAccumulation) -> tuple[dict[str, float], float]:
    """Gradient-based sparsity per target from the l2 accumulation (allocation.py), and the seconds it took."""
    start, cfg = time.perf_counter(), subject.config
    per_block = subject.adapter.targets_by_block(subject.model, cfg.targets, cfg.ignore)
    weights = subject.placement.target_weights([t for block in per_block for t in block])
    sparsities = gradient_allocation(weights, accumulation.get("l2"), cfg.sparsity, cfg.gamma, cfg.allocation_clip)
    return sparsities, time.perf_counter() - start


def without_allocation_sums(config: GBLMConfig, accumulation: GradientAccumulation) -> GradientAccumulation:
    """The accumulation pruning holds once the allocation is made: without the l2 sums the selection does not read
    (0.4 GiB for SmolLM2-135M, 26 GB for a 7B model). A new object, so a caller's accumulation keeps its sums."""
    if not accumulation.l2sq or (config.selection_uses_gradients and config.gradient_norm == "l2"):
        return accumulation
    return replace(accumulation, l2sq={})


def run_gradient_phase(
    subject: GradientSubject, cache_path: str | Path | None = None, progress: bool = True
) -> GradientPhase:
    """The gradient pass, or with `two_pass_gradients` two: the l2 accumulation, the allocation from it, then the l1
    accumulation once the l2 one is freed (so one accumulator is held at a time)."""
    passes = gradient_passes(subject.config)
    if len(passes) == 1:
        accumulation, seconds = collect(subject, cache_path=cache_path, progress=progress)
        return GradientPhase(accumulation, timings={"gradients_s": seconds})
    if cache_path is not None:
        raise OptionError(
            "two_pass_gradients",
            "{flag} cannot use a gradient cache (a cache holds both accumulations at once): pass the cache without "
            "{name}, or leave the cache out",
        )
    first = time.perf_counter()
    logger.info("Gradient pass 1 of 2: the l2 sums, for the allocation")
    accumulation, spent = collect(subject, progress=progress, norms=passes[0])
    allocation, allocation_s = allocate(subject, accumulation)
    del accumulation  # frees the l2 accumulators before the second pass allocates its own
    logger.info("Gradient pass 2 of 2: the l1 sums, for the selection")
    accumulation, seconds = collect(subject, progress=progress, norms=passes[1])
    logger.info("Two gradient passes (l2, then l1) and the allocation in %.1f s", time.perf_counter() - first)
    return GradientPhase(accumulation, allocation, {"gradients_s": spent + seconds, "allocation_s": allocation_s})
