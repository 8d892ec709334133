"""`GBLMPruner`: load -> calibrate -> (gradients) -> prune -> evaluate -> save / push."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .adapters import ModelAdapter, get_adapter
from .allocation import gradient_allocation
from .calibration import TokenCalibration, build_token_calibration
from .configuration import GBLMConfig
from .gradients import GradientAccumulation, required_norms, run_collection
from .gradients.cache import model_fingerprint
from .loading import load_model
from .methods import get_method
from .report import SparsityReport
from .runner import prune_layerwise
from .utils import resolve_device

logger = logging.getLogger(__name__)


class GBLMPruner:
    """Prune a LLaMA-family LLM or a timm ViT with GBLM, Wanda, SparseGPT, magnitude or gblm-obs.

    >>> pruner = GBLMPruner.from_pretrained("path/or/id", GBLMConfig(method="gblm", sparsity=0.5))
    >>> model = pruner.prune()
    >>> pruner.save_pretrained("pruned-model")
    """

    def __init__(
        self,
        model: nn.Module,
        config: GBLMConfig | None = None,
        tokenizer: Any = None,
        model_id: str | None = None,
        adapter: ModelAdapter | None = None,
        preprocessing: dict[str, Any] | None = None,
    ) -> None:
        self.config = config or GBLMConfig()
        self.config.validate()
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.adapter = adapter or get_adapter(model)
        self.preprocessing = preprocessing or {}
        self.calibration: Any = None
        self.gradients: GradientAccumulation | None = None
        self.report: SparsityReport | None = None
        self.sparsities: dict[str, float] = {}
        self.results: dict[str, float] = {}
        self.timings: dict[str, float] = {}
        self.evaluation: dict[str, dict[str, Any]] = {}  # label -> evaluation settings, for the model card
        self._check_shapes()

    @classmethod
    def from_pretrained(
        cls, model: str | Path | nn.Module | None = None, config: GBLMConfig | None = None, **load_kwargs: Any
    ) -> GBLMPruner:
        """Load a model (Hub id, local folder, timm name, or an instance; None = the embedded SmolLM2-135M)."""
        config = config or GBLMConfig()
        config.validate()
        loaded = load_model(model, config, **load_kwargs)
        return cls(
            loaded.model,
            config,
            tokenizer=loaded.tokenizer,
            model_id=loaded.model_id,
            adapter=loaded.adapter,
            preprocessing=loaded.preprocessing,
        )

    # -- checks before heavy work ---------------------------------------------------------------------------------
    def targets(self) -> dict[str, nn.Linear]:
        found = self.adapter.target_linears(self.model, self.config.targets, self.config.ignore)
        if not found:
            raise ValueError("no linear layer matches the target / ignore patterns: nothing to prune")
        return found

    def _check_shapes(self) -> None:
        targets = self.targets()  # fails early when the patterns select nothing
        nm = self.config.nm
        if nm is None:
            return
        bad = [f"{n} (d_in={m.in_features})" for n, m in targets.items() if m.in_features % nm[1]]
        if bad:
            raise ValueError(
                f"pattern={self.config.pattern!r} needs every input dimension divisible by M={nm[1]}; not: "
                + ", ".join(bad[:5])
            )

    # -- pipeline steps -------------------------------------------------------------------------------------------
    def _place(self) -> torch.device:
        device = resolve_device(self.config.device)
        if getattr(self.model, "hf_device_map", None):
            return device  # dispatched by accelerate: blocks run where they live
        if next(self.model.parameters()).device != device:
            self.model.to(device)
        return device

    def calibration_data(self, calibration: Any = None) -> Any:
        """The calibration set (built once): windows of the config's source, or the tensors given here."""
        if calibration is not None:
            self.calibration = (
                self.adapter.make_calibration(calibration, self.config)
                if hasattr(self.adapter, "make_calibration")
                else TokenCalibration(calibration)
            )
        if self.calibration is None:
            if hasattr(self.adapter, "build_calibration"):
                self.calibration = self.adapter.build_calibration(self.config, self.preprocessing)
            else:
                if self.tokenizer is None:
                    raise ValueError("this model has no tokenizer: pass calibration tokens to prune(calibration=...)")
                cfg = self.config
                self.calibration = build_token_calibration(
                    self.tokenizer, cfg.calibration, cfg.num_samples, cfg.seqlen, cfg.seed, cfg.calibration_text_column
                )
        return self.calibration

    def cache_metadata(self) -> dict[str, str]:
        calib = self.calibration_data()
        return {
            "model_fingerprint": model_fingerprint(self.model, self.targets()),
            "calibration_fingerprint": calib.fingerprint(),
            "nsamples_target": str(len(calib)),
        }

    def collect_gradients(
        self, cache_path: str | Path | None = None, checkpoint_every: int = 0, progress: bool = True, **kwargs: Any
    ) -> GradientAccumulation:
        """Per-sample gradient pass of the dense model over the pruner's own calibration set."""
        if self.report is not None:
            raise RuntimeError("the model is already pruned: gradients must come from the dense model")
        calib = self.calibration_data()
        self._place()
        start = time.perf_counter()
        self.gradients = run_collection(
            self.model,
            self.targets(),
            calib,
            self.adapter.loss,
            self.config,
            total=len(calib),
            norms=required_norms(self.config),
            cache_path=cache_path,
            cache_metadata=self.cache_metadata(),
            checkpoint_every=checkpoint_every,
            tokens_fn=self.adapter.sample_tokens,
            progress=progress,
            **kwargs,
        )
        self.timings["gradients_s"] = time.perf_counter() - start
        return self.gradients

    def prune(
        self,
        calibration: Any = None,
        gradients: GradientAccumulation | str | Path | None = None,
        progress: bool = True,
    ) -> nn.Module:
        """Prune the model in place and return it. `gradients` may be an accumulation or a cache file path."""
        if self.report is not None:
            raise RuntimeError("this pruner has already pruned its model")
        cfg = self.config
        method = get_method(cfg.method)
        needs_data = method.statistic is not None or cfg.needs_gradients
        if needs_data or calibration is not None:
            self.calibration_data(calibration)
        if cfg.needs_gradients:
            if isinstance(gradients, GradientAccumulation):
                self.gradients = gradients
            elif gradients is not None or self.gradients is None:
                self.collect_gradients(cache_path=gradients, progress=progress)
        self._place()
        start = time.perf_counter()
        if cfg.effective_allocation == "gradient":
            self.sparsities = gradient_allocation(
                {n: m.weight for n, m in self.targets().items()},
                self.gradients.get("l2"),
                cfg.sparsity,
                cfg.gamma,
                cfg.allocation_clip,
            )
        grads = self.gradients.get(cfg.gradient_norm) if method.needs_gradients else None
        self.report = prune_layerwise(
            self.model, self.adapter, cfg, self.calibration or [], grads, self.sparsities, progress
        )
        self.timings["prune_s"] = time.perf_counter() - start
        logger.info(
            "Pruned %d linears with %s (%s): overall sparsity %.4f in %.1f s",
            len(self.report.layers),
            cfg.method,
            cfg.pattern,
            self.report.overall_sparsity,
            self.timings["prune_s"],
        )
        return self.model

    def evaluate(self, label: str | None = None, **kwargs: Any) -> float:
        """Perplexity (LLMs) or top-1 accuracy (ViTs) on held-out data; stored in `results` under `label`."""
        self._place()
        value = self.adapter.evaluate(self.model, self, **kwargs)
        label = label or ("pruned" if self.report is not None else "dense")
        self.results[f"{label}_{self.adapter.metric_name}"] = value
        # JSON scalars only (the card names the data); tensors such as evaluation images are not recorded.
        self.evaluation[label] = {
            k: v
            for k, v in kwargs.items()
            if k != "progress" and (v is None or isinstance(v, (str, int, float, bool)))
        }
        return value

    def sidecar(self) -> dict[str, Any]:
        from .serialization import library_versions

        calib = self.calibration
        return {
            "format": "optimum-gblm/1",
            "config": self.config.to_dict(),
            "config_fingerprint": self.config.fingerprint(),
            "base_model": self.model_id,
            "library": self.adapter.library,
            "adapter": self.adapter.name,
            "sparsity": self.report.to_dict() if self.report else None,
            "sparsity_range": list(self.report.sparsity_range()) if self.report else None,
            "calibration": {**calib.describe(), "fingerprint": calib.fingerprint()} if calib is not None else None,
            "results": dict(self.results),
            "timings": dict(self.timings),
            "versions": library_versions(),
            "deviations": {
                "accumulation": "fp32 gradient accumulation and fp32 scores (reference: fp16)"
                if self.config.score_dtype == "float32"
                else "fp16 scores, as the reference",
                "ties": "exact per-group counts with stable tie-breaking (reference: <= threshold over-prunes ties)",
            },
        }

    def save_pretrained(self, save_directory: str | Path, overwrite: bool = False, model_card: bool = True) -> Path:
        """Write weights (safetensors, exact zeros), config, tokenizer / preprocessing, side-car and card."""
        from .saving import save_pruned

        return save_pruned(self, save_directory, overwrite=overwrite, model_card=model_card)

    def push_to_hub(
        self,
        repo_id: str,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str | None = None,
        revision: str | None = None,
        endpoint: str | None = None,
        save_directory: str | Path | None = None,
        overwrite: bool = False,
    ) -> str:
        """Save with `save_pretrained` (to a temporary folder unless `save_directory`) and upload that exact folder,
        generated card included. Returns the commit URL (a str with `.oid`)."""
        from .hub import push_pruner

        return push_pruner(
            self,
            repo_id,
            private=private,
            token=token,
            commit_message=commit_message,
            revision=revision,
            endpoint=endpoint,
            save_directory=save_directory,
            overwrite=overwrite,
        )
