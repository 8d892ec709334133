"""The pruner's gradient steps: the per-sample gradient pass over its calibration set (with its cache's
fingerprints), the gradient-based allocation, and the two-pass variant that holds one accumulator at a time."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from .allocation import gradient_allocation
from .gradients import GradientAccumulation, gradient_passes, required_norms, run_collection
from .gradients.cache import calibration_settings, config_source, model_fingerprint, reusable_cache
from .targets import target_modules

logger = logging.getLogger(__name__)


class GradientStepsMixin:
    """Gradient steps of `GBLMPruner` (which provides the model, config, adapter, placement, calibration, timings)."""

    config: Any
    model: Any
    adapter: Any
    gradients: GradientAccumulation | None
    pruning_map: Any
    timings: dict[str, float]
    _pass_allocation: dict[str, float] | None

    def cache_metadata(self) -> dict[str, str]:
        """What a gradient cache of this pruner must match (fingerprints), and what explains a mismatch (settings)."""
        calib = self.calibration_data()
        seqlen = calib.describe().get("seqlen")
        if self._calibration_from_config:
            cfg = self.config
            settings = calibration_settings(config_source(cfg.calibration), cfg.num_samples, seqlen, cfg.seed)
        else:
            settings = calibration_settings(getattr(calib, "source", "tensor"), len(calib), seqlen)
        return {
            "model_fingerprint": model_fingerprint(self.model, self.placement.weights(target_modules(self.targets()))),
            "calibration_fingerprint": calib.fingerprint(),
            "nsamples_target": str(len(calib)),
            **settings,
        }

    def _legacy_cache_metadata(self) -> dict[str, str]:
        """The fingerprints that caches written before fingerprint version 2 recorded."""
        modules = self.placement.weights(target_modules(self.targets()))
        legacy = {"model_fingerprint": model_fingerprint(self.model, modules, legacy=True)}
        if hasattr(self.calibration, "legacy_fingerprint"):
            legacy["calibration_fingerprint"] = self.calibration.legacy_fingerprint()
        return legacy

    def collect_gradients(
        self,
        cache_path: str | Path | None = None,
        checkpoint_every: int = 0,
        progress: bool = True,
        overwrite: bool = False,
        norms: tuple[str, ...] | None = None,
        **kwargs: Any,
    ) -> GradientAccumulation:
        """Per-sample gradient pass of the dense model over the pruner's own calibration set. `cache_path`: a
        matching complete cache is reused, a partial one resumed, one made for anything else refused (the error
        names what differs; the file is left untouched) unless `overwrite`. `norms`: the accumulations to keep
        (default: every one the config needs)."""
        if self.pruning_map is not None:
            raise RuntimeError("the model is already pruned: gradients must come from the dense model")
        calib = self.calibration_data()
        if cache_path is not None and self.config.blockwise_gradients:
            raise ValueError(
                "blockwise_gradients=True cannot use a gradient cache (it keeps its sums on disk block by block): "
                "pass the cache without blockwise_gradients, or leave the cache out"
            )
        if reusable_cache(cache_path, overwrite):  # read without running the model (a disk placement can do that)
            self.placement.prepare(self.model)
        else:
            self.placement.prepare_whole(self.model, "the gradient pass")
        start = time.perf_counter()
        self.gradients = run_collection(
            self.model,
            target_modules(self.targets()),
            calib,
            self.adapter.loss,
            self.config,
            total=len(calib),
            norms=norms or required_norms(self.config),
            cache_path=cache_path,
            cache_metadata=self.cache_metadata(),
            legacy_metadata=self._legacy_cache_metadata,
            overwrite=overwrite,
            checkpoint_every=checkpoint_every,
            tokens_fn=self.adapter.sample_tokens,
            progress=progress,
            **{"gradient_checkpointing": self.config.gradient_checkpointing, **kwargs},
        )
        self.timings["gradients_s"] = time.perf_counter() - start
        return self.gradients

    def _allocate(self) -> dict[str, float]:
        """Gradient-based sparsity per target from the l2 accumulation (allocation.py); times itself."""
        start, cfg = time.perf_counter(), self.config
        targets = [t for block in self.adapter.targets_by_block(self.model, cfg.targets, cfg.ignore) for t in block]
        weights = self.placement.target_weights(targets)
        sparsities = gradient_allocation(
            weights, self.gradients.get("l2"), cfg.sparsity, cfg.gamma, cfg.allocation_clip
        )
        self.timings["allocation_s"] = time.perf_counter() - start
        return sparsities

    def _release_allocation_sums(self) -> None:
        """Once the allocation is made, let go of the l2 sums the selection does not read, so pruning holds one
        accumulator (0.4 GiB for SmolLM2-135M, 26 GB for a 7B model). The accumulation is replaced, not changed in
        place: one passed to `prune(gradients=...)` keeps its sums for its owner."""
        cfg, held = self.config, self.gradients
        if held is None or not held.l2sq or (cfg.selection_uses_gradients and cfg.gradient_norm == "l2"):
            return
        self.gradients = replace(held, l2sq={})

    def _gradient_passes(self, cache_path: str | Path | None, progress: bool) -> None:
        """The gradient pass, or with `two_pass_gradients` two: the l2 accumulation, the allocation from it, then
        the l1 accumulation once the l2 one is freed (so one accumulator is held at a time)."""
        passes = gradient_passes(self.config)
        if len(passes) == 1:
            self.collect_gradients(cache_path=cache_path, progress=progress)
            return
        if cache_path is not None:
            raise ValueError(
                "two_pass_gradients=True cannot use a gradient cache (a cache holds both accumulations at once): "
                "pass the cache without two_pass_gradients, or leave the cache out"
            )
        first = time.perf_counter()
        logger.info("Gradient pass 1 of 2: the l2 sums, for the allocation")
        self.collect_gradients(progress=progress, norms=passes[0])
        spent = self.timings["gradients_s"]
        self._pass_allocation = self._allocate()
        self.gradients = None  # frees the l2 accumulators before the second pass allocates its own
        logger.info("Gradient pass 2 of 2: the l1 sums, for the selection")
        self.collect_gradients(progress=progress, norms=passes[1])
        self.timings["gradients_s"] += spent
        logger.info("Two gradient passes (l2, then l1) and the allocation in %.1f s", time.perf_counter() - first)
