"""`RecoveryConfig`: the settings of a recovery run (PERP: retrain a small parameter subset, keep the sparsity)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from .registry import list_recovery_subsets, lora_subsets, subset_help


def __getattr__(name: str) -> Any:
    # the former constant tuples, now read from the registry (subsets registered later included)
    if name == "SUBSETS":
        return tuple(list_recovery_subsets())
    if name == "LORA_SUBSETS":
        return tuple(lora_subsets())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"metadata": {"help": text, **extra}}


class _SubsetMetadata(Mapping):
    """The subset field's help and choices, read from the registry on each access (the CLI builds `--subset` from
    them), so a subset registered after import is offered and described too."""

    def __getitem__(self, key: str) -> Any:
        if key == "help":
            return subset_help()
        if key == "choices":
            return tuple(list_recovery_subsets())
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(("help", "choices"))

    def __len__(self) -> int:
        return 2


@dataclass
class RecoveryConfig:
    """What to retrain, on which text, for how long. Validated on creation; `to_dict` is what the map records."""

    subset: list[str] = field(default_factory=lambda: ["norm", "masklora"], metadata=_SubsetMetadata())
    learning_rate: float = field(default=5e-4, **_help("Peak learning rate (AdamW, linear decay after warm-up)."))
    max_steps: int = field(default=100, **_help("Optimizer steps."))
    batch_size: int = field(default=4, **_help("Windows per optimizer step."))
    seqlen: int = field(default=256, **_help("Tokens per training window."))
    num_windows: int = field(default=512, **_help("Training windows drawn (seeded) from the training text."))
    heldout_windows: int = field(
        default=8, **_help("Held-out windows (the end of the training text, never trained on) for the Trainer's loss.")
    )
    heldout_steps: int = field(default=0, **_help("Evaluate the held-out loss every N steps (0: only at the end)."))
    warmup_ratio: float = field(default=0.1, **_help("Share of the steps with a linear learning-rate warm-up."))
    weight_decay: float = field(default=0.0, **_help("AdamW weight decay of the trained parameters."))
    lora_rank: int = field(default=16, **_help("Rank of the masklora / scalelora updates."))
    lora_alpha: float = field(default=32.0, **_help("LoRA scale numerator: the update is multiplied by alpha/rank."))
    lora_targets: list[str] | None = field(
        default=None, **_help("Regexes of the layers that get LoRA updates (default: every pruned target).")
    )
    distill_weight: float = field(
        default=0.0, **_help("Weight of the KL term to the dense teacher's logits (0: no distillation).")
    )
    temperature: float = field(default=2.0, **_help("Distillation temperature."))
    teacher: str | None = field(default=None, **_help("Dense teacher model (folder or Hub id) for distillation."))
    source: str = field(
        default="offline-corpus",
        **_help("Training text: offline-corpus (its calibration slice), a text file, or a `datasets` source."),
    )
    text_column: str = field(default="text", **_help("Text column of a `datasets` source."))
    seed: int = field(default=0, **_help("Seed of the window sampling, data order and LoRA initialisation."))
    bf16: bool = field(default=False, **_help("bfloat16 mixed precision (autocast); weights stay in their dtype."))
    gradient_checkpointing: bool = field(default=False, **_help("Recompute activations in the backward pass."))
    output_dir: str | None = field(
        default=None, **_help("Folder for the Trainer's checkpoints and logs (default: a temporary folder).")
    )
    save_steps: int = field(default=0, **_help("Write a resumable Trainer checkpoint every N steps (0: none)."))
    resume: bool = field(default=False, **_help("Resume from the last checkpoint in output_dir."))
    logging_steps: int = field(default=10, **_help("Log the training loss every N steps."))

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        subset = [self.subset] if isinstance(self.subset, str) else list(self.subset)
        known = list_recovery_subsets()
        unknown = [s for s in subset if s not in known]
        if not subset or unknown:
            raise ValueError(f"subset={subset!r} is invalid: choose one or more of {', '.join(known)}")
        lora = [s for s in lora_subsets() if s in subset]
        if len(lora) > 1:
            raise ValueError(
                f"subset: {' and '.join(lora)} {'both' if len(lora) == 2 else 'all'} update the same layers; choose one"
            )
        self.subset = list(dict.fromkeys(subset))
        for name in ("learning_rate", "temperature", "lora_alpha"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"{name}={value!r} is invalid: it must be a positive number")
        for name in ("max_steps", "batch_size", "seqlen", "num_windows", "lora_rank", "logging_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} is invalid: it must be a positive integer")
        for name in ("heldout_windows", "heldout_steps", "save_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}={value!r} is invalid: it must be an integer >= 0")
        for name in ("warmup_ratio", "distill_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{name}={value!r} is invalid: it must be in [0, 1]")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay!r} is invalid: it must be >= 0")
        if self.resume and not self.output_dir:
            raise ValueError("resume=True needs the output_dir that holds the Trainer's checkpoints")
        if self.save_steps and not self.output_dir:
            raise ValueError("save_steps needs an output_dir to write the checkpoints to")

    @property
    def lora(self) -> str | None:
        """The low-rank subset of the run, if any (at most one)."""
        lora = lora_subsets()
        return next((s for s in self.subset if s in lora), None)

    @property
    def distill(self) -> bool:
        return self.distill_weight > 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RecoveryConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown recovery settings {unknown}: known are {sorted(known)}")
        return cls(**values)


def field_default(f: Any) -> Any:
    return f.default_factory() if f.default is MISSING else f.default
