"""`RecoveryConfig`: the settings of a recovery run (PERP: retrain a small parameter subset, keep the sparsity)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from ..fields import FRACTION, NON_NEGATIVE, POSITIVE, POSITIVE_INT, OptionError, check_fields, field_spec
from .registry import list_recovery_subsets, lora_subsets, subset_help


def __getattr__(name: str) -> Any:
    # the former constant tuples, now read from the registry (subsets registered later included)
    if name == "SUBSETS":
        return tuple(list_recovery_subsets())
    if name == "LORA_SUBSETS":
        return tuple(lora_subsets())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _help(text: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": field_spec(text, **spec)}


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
    learning_rate: float = field(
        default=5e-4, **_help("Peak learning rate (AdamW, linear decay after warm-up).", bounds=POSITIVE)
    )
    max_steps: int = field(default=100, **_help("Optimizer steps.", bounds=POSITIVE_INT))
    batch_size: int = field(default=4, **_help("Windows per optimizer step.", bounds=POSITIVE_INT))
    seqlen: int = field(default=256, **_help("Tokens per training window.", bounds=POSITIVE_INT))
    num_windows: int = field(
        default=512, **_help("Training windows drawn (seeded) from the training text.", bounds=POSITIVE_INT)
    )
    heldout_windows: int = field(
        default=8,
        **_help(
            "Held-out windows (the end of the training text, never trained on) for the Trainer's loss.",
            bounds=NON_NEGATIVE,
        ),
    )
    heldout_steps: int = field(
        default=0, **_help("Evaluate the held-out loss every N steps (0: only at the end).", bounds=NON_NEGATIVE)
    )
    warmup_ratio: float = field(
        default=0.1, **_help("Share of the steps with a linear learning-rate warm-up.", bounds=FRACTION)
    )
    weight_decay: float = field(
        default=0.0, **_help("AdamW weight decay of the trained parameters.", bounds=NON_NEGATIVE)
    )
    lora_rank: int = field(default=16, **_help("Rank of the masklora / scalelora updates.", bounds=POSITIVE_INT))
    lora_alpha: float = field(
        default=32.0, **_help("LoRA scale numerator: the update is multiplied by alpha/rank.", bounds=POSITIVE)
    )
    lora_targets: list[str] | None = field(
        default=None, **_help("Regexes of the layers that get LoRA updates (default: every pruned target).")
    )
    distill_weight: float = field(
        default=0.0,
        **_help("Weight of the KL term to the dense teacher's logits (0: no distillation).", bounds=FRACTION),
    )
    temperature: float = field(default=2.0, **_help("Distillation temperature.", bounds=POSITIVE))
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
    save_steps: int = field(
        default=0, **_help("Write a resumable Trainer checkpoint every N steps (0: none).", bounds=NON_NEGATIVE)
    )
    resume: bool = field(default=False, **_help("Resume from the last checkpoint in output_dir."))
    logging_steps: int = field(default=10, **_help("Log the training loss every N steps.", bounds=POSITIVE_INT))

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """The field checks (types, `choices` from the subset registry, `bounds`: `check_fields`), then the rules
        across fields."""
        if isinstance(self.subset, str):
            self.subset = [self.subset]
        check_fields(self)
        lora = [s for s in lora_subsets() if s in self.subset]
        if len(lora) > 1:
            raise ValueError(
                f"subset: {' and '.join(lora)} {'both' if len(lora) == 2 else 'all'} update the same layers; choose one"
            )
        self.subset = list(dict.fromkeys(self.subset))
        if self.resume and not self.output_dir:
            raise OptionError("resume", "{flag} needs the {name:output_dir} that holds the Trainer's checkpoints")
        if self.save_steps and not self.output_dir:
            raise OptionError("save_steps", "{name} needs an {name:output_dir} to write the checkpoints to")

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
