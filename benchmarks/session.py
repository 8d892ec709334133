"""In-process quality runs on SmolLM2-135M: load once, one calibration set and one gradient pass per seed, a
fresh copy of the dense model per method. (Cost and peak memory are measured in isolated processes instead.)"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch

from optimum_gblm import GBLMConfig, GBLMPruner
from optimum_gblm.data.text import build_token_calibration
from optimum_gblm.evaluation import evaluation_stream, perplexity
from optimum_gblm.gradients import GradientAccumulation

logger = logging.getLogger(__name__)


def shuffled(acc: GradientAccumulation, seed: int) -> GradientAccumulation:
    """Control: every matrix keeps its gradient values, permuted at random within the matrix."""
    gen = torch.Generator().manual_seed(seed)
    out = GradientAccumulation(scale=acc.scale, nsamples=acc.nsamples)
    for store_in, store_out in ((acc.l1, out.l1), (acc.l2sq, out.l2sq)):
        for name, t in store_in.items():
            store_out[name] = t.reshape(-1)[torch.randperm(t.numel(), generator=gen)].reshape(t.shape)
    return out


class QualitySession:
    def __init__(
        self,
        num_samples: int,
        seqlen: int,
        eval_windows: int,
        eval_seqlen: int = 256,
        eval_sources: tuple[str, ...] = ("offline-corpus",),
        calibration: str = "offline-corpus",
        device: str = "cpu",
    ) -> None:
        self.base = GBLMPruner.from_pretrained(None, GBLMConfig(method="wanda", device=device))
        self.size = {"num_samples": num_samples, "seqlen": seqlen, "calibration": calibration, "device": device}
        if device != "cpu":  # fresh copies, the dense evaluation and the teacher then live on the device already
            self.base.model.to(device)
        self.eval_windows, self.eval_seqlen = eval_windows, eval_seqlen
        self.streams = {s: evaluation_stream(self.base.tokenizer, s) for s in eval_sources}
        self._calib: dict[int, torch.Tensor] = {}
        self._grads: dict[int, GradientAccumulation] = {}

    def perplexities(self, model: torch.nn.Module) -> dict[str, float]:
        return {
            s: perplexity(model, ids, self.eval_seqlen, self.eval_windows, progress=False)
            for s, ids in self.streams.items()
        }

    def dense(self) -> dict[str, float]:
        return self.perplexities(self.base.model)

    def calibration(self, seed: int) -> torch.Tensor:
        if seed not in self._calib:
            s = self.size
            self._calib[seed] = build_token_calibration(
                self.base.tokenizer, s["calibration"], s["num_samples"], s["seqlen"], seed
            ).input_ids
        return self._calib[seed]

    def gradients(self, seed: int) -> GradientAccumulation:
        """l1 and l2 accumulations of the dense model on this seed's calibration set (one pass)."""
        if seed not in self._grads:
            pruner = self._pruner(GBLMConfig(method="gblm-obs", seed=seed, **self.size), seed)
            self._grads[seed] = pruner.collect_gradients(progress=False)
        return self._grads[seed]

    def _pruner(self, config: GBLMConfig, seed: int) -> GBLMPruner:
        pruner = GBLMPruner(
            copy.deepcopy(self.base.model), config, tokenizer=self.base.tokenizer, model_id=self.base.model_id
        )
        pruner.calibration_data(self.calibration(seed))
        return pruner

    def run(self, seed: int = 0, shuffle_gradients: bool = False, **settings: Any) -> dict[str, Any]:
        config = GBLMConfig.from_dict({"seed": seed, **self.size, **settings}, strict=True)  # flat method arguments
        pruner = self._pruner(config, seed)
        gradients = None
        if config.needs_gradients:
            gradients = self.gradients(seed)
            gradients = shuffled(gradients, seed) if shuffle_gradients else gradients
        pruner.prune(gradients=gradients, progress=False)
        result = {
            "ppl": self.perplexities(pruner.model),
            "range": pruner.pruning_map.sparsity_range(),
            "sparsity": pruner.pruning_map.overall_sparsity,
            "prune_s": pruner.timings.get("prune_s", 0.0),
        }
        logger.info("%s seed %d: %s", settings, seed, result["ppl"])
        del pruner
        return result
