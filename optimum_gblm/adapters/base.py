"""What the engine needs to know about a model family, declared on one base class.

An adapter says which models and sources it supports (`supports`, `claims_source`, `skeleton` before any
weight is loaded), how to `load` them, where the blocks are, which 2-D weights are prune targets and which of them
share an input site, how to run and score one calibration sample, how to build calibration sets, which metric
evaluates it, and how to `save` it natively. It never writes into the pruner; evaluation caches live in an
evaluator (optimum_gblm.evaluation).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..targets import PruneTarget, linear_target, target_modules
from ..utils import sample_tensors


@dataclass
class LoadedModel:
    model: nn.Module
    adapter: ModelAdapter
    tokenizer: Any = None
    model_id: str | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)


class ModelAdapter:
    """Model-family knowledge as data plus a few small hooks. Subclasses set the class attributes."""

    name: ClassVar[str]
    library: ClassVar[str]  # "transformers" or "timm": how checkpoints are saved and reloaded
    metric_name: ClassVar[str]  # a registered metric (evaluation/metrics.py): "perplexity", "accuracy", ...
    claims_any_source: ClassVar[bool] = False  # the fallback loader for names no adapter claims
    block_path: ClassVar[str]  # dotted path of the ModuleList of blocks
    block_linears: ClassVar[tuple[str, ...]]  # targeted linears, relative to a block
    # Linears (relative to a block) that read the same input, mapped to the site's name (relative to the block).
    shared_inputs: ClassVar[dict[str, str]] = {}

    # -- which models and sources -------------------------------------------------------------------------------
    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        """Whether a loaded model belongs to this family."""
        raise NotImplementedError

    @classmethod
    def architectures(cls) -> list[str]:
        """What it supports, in words, for error messages."""
        raise NotImplementedError

    @classmethod
    def claims_source(cls, source: str) -> bool:
        """Whether a model name or folder is this adapter's to load (decided without loading weights)."""
        raise NotImplementedError

    @classmethod
    def for_model(cls, model: nn.Module) -> ModelAdapter:
        """The adapter instance for a loaded model (reads what it needs from it)."""
        return cls()

    @classmethod
    def load(cls, source: str, config: Any, **load_kwargs: Any) -> LoadedModel:
        """Check the source (before any weight is loaded), then load model, tokenizer / preprocessing."""
        raise NotImplementedError

    @classmethod
    def skeleton(cls, source: str, config: Any) -> nn.Module | None:
        """The model's structure on the meta device, built from a local or cached config (no weights, no network),
        or None when that cannot be known so. Raises what `load` would raise before loading any weight (a missing
        local path, an unsupported architecture)."""
        return None

    @classmethod
    def wrap(cls, model: nn.Module, config: Any, **load_kwargs: Any) -> LoadedModel:
        """A `LoadedModel` for a model instance the user passed."""
        return LoadedModel(model, cls.for_model(model), load_kwargs.get("tokenizer"), load_kwargs.get("model_id"))

    # -- structure ------------------------------------------------------------------------------------------------
    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.block_path)

    def block_targets(
        self, block: nn.Module, prefix: str, targets: list[str] | None = None, ignore: list[str] | None = None
    ) -> list[PruneTarget]:
        """The prune targets of one block: its selected linears, with their input sites."""
        out: list[PruneTarget] = []
        for rel, module in block.named_modules():
            if not isinstance(module, nn.Linear):
                continue
            fqn = f"{prefix}.{rel}"
            if targets and "all-linear" in targets:  # every linear of the block
                selected = True
            else:
                selected = any(re.search(p, fqn) for p in targets) if targets else rel in self.block_linears
            if selected and not any(re.search(p, fqn) for p in ignore or ()):
                site = self.shared_inputs.get(rel)
                out.append(linear_target(fqn, module, f"{prefix}.{site}" if site else fqn))
        return out

    def targets_by_block(
        self, model: nn.Module, targets: list[str] | None = None, ignore: list[str] | None = None
    ) -> list[list[PruneTarget]]:
        """Per block (in order), its prune targets."""
        return [
            self.block_targets(block, f"{self.block_path}.{index}", targets, ignore)
            for index, block in enumerate(self.blocks(model))
        ]

    def prune_targets(
        self, model: nn.Module, targets: list[str] | None = None, ignore: list[str] | None = None
    ) -> list[PruneTarget]:
        return [t for block in self.targets_by_block(model, targets, ignore) for t in block]

    def select_targets(self, model: nn.Module, config: Any) -> list[PruneTarget]:
        """The targets `config.targets` / `config.ignore` select; none is an error."""
        found = self.prune_targets(model, config.targets, config.ignore)
        if not found:
            raise ValueError("no prune target matches the target / ignore patterns: nothing to prune")
        return found

    def check_targets(self, model: nn.Module, config: Any) -> None:
        """Some target is selected and N:M divides every target's input dimension. Reads shapes only, so a
        skeleton on the meta device will do."""
        nm = config.nm
        targets = self.select_targets(model, config)
        bad = [f"{t.name} (d_in={t.in_features})" for t in targets if nm is not None and t.in_features % nm[1]]
        if bad:
            raise ValueError(
                f"pattern={config.pattern!r} needs every input dimension divisible by M={nm[1]}; not: "
                + ", ".join(bad[:5])
            )

    def target_linears(
        self, model: nn.Module, targets: list[str] | None = None, ignore: list[str] | None = None
    ) -> dict[str, nn.Module | PruneTarget]:
        """What the gradient pass hooks, in block order: name -> module of every whole-weight target, name -> the
        target itself for a slice of a 3-D parameter (targets.target_modules)."""
        return target_modules(self.prune_targets(model, targets, ignore))

    # -- calibration samples --------------------------------------------------------------------------------------
    def forward(self, model: nn.Module, sample: Any) -> Any:
        """Run the model on one calibration sample (used to capture block inputs)."""
        raise NotImplementedError

    def loss(self, model: nn.Module, sample: Any) -> torch.Tensor:
        """Scalar loss of one calibration sample, for the per-sample gradient pass."""
        raise NotImplementedError

    def sample_tokens(self, sample: Any) -> int:
        """Tokens (or patches) in one sample, for throughput reporting."""
        return 1

    def build_calibration(
        self, config: Any, tokenizer: Any = None, preprocessing: dict[str, Any] | None = None
    ) -> Any:
        """The calibration set named by the config (`config.calibration`, `num_samples`, `seqlen`, `seed`)."""
        raise NotImplementedError

    def make_calibration(self, data: Any, config: Any) -> Any:
        """A calibration set from tensors the user passed to `prune(calibration=...)`."""
        raise NotImplementedError

    def fingerprint_tensors(self, sample: Any) -> tuple[torch.Tensor, ...]:
        """The tensors that identify one calibration sample in a calibration fingerprint (`utils.samples_fingerprint`),
        whatever its container: the same as the adapter's calibration sets use for the same data. Here: all of
        the sample's tensors."""
        return sample_tensors(sample)

    def preprocessing(self) -> dict[str, Any]:
        """The input preprocessing the model expects (timm: its data config); {} when inputs are token ids."""
        return {}

    def describe_calibration(self, calibration: Any) -> dict[str, Any]:
        """JSON-ready description of a calibration set for the side-car and the card."""
        return {**calibration.describe(), "fingerprint": calibration.fingerprint()}

    # -- saving ---------------------------------------------------------------------------------------------------
    def save(self, model: nn.Module, folder: Any, tokenizer: Any = None) -> None:
        """Write a checkpoint that the family's own library reloads without optimum-gblm."""
        raise NotImplementedError
