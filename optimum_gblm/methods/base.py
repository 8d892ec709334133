"""The method interface: a pure scoring kernel plus a prune step, with what each method needs declared as data.

A method declares its own argument dataclass (`args`), the input statistic it needs (`statistic`), whether it needs
per-sample gradients, its comparison groups and default allocation, and its descriptions. The registry, the config
validation, the CLI, the model cards and the tests read these declarations; nothing lists method names elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..fields import NON_NEGATIVE, POSITIVE_INT, Bounds, check_fields
from ..masks import select_mask

if TYPE_CHECKING:
    from ..statistics import InputStatistics


@dataclass
class MethodArgs:
    """A method's own arguments. Subclasses add dataclass fields with `metadata=field_spec("help", ...)`
    (optimum_gblm.fields: `choices`, `bounds`; a plain `{"help": ...}` works too) and may extend `validate` with
    cross-field checks (raise `ValueError` naming the field and what is allowed)."""

    # Bounds of fields that declare none, by annotation: integers positive, numbers non-negative.
    default_bounds: ClassVar[Mapping[str, Bounds]] = {"int": POSITIVE_INT, "float": NON_NEGATIVE}

    def validate(self) -> None:
        """The field checks (`check_fields`): types, choices, bounds (declared, else `default_bounds`)."""
        check_fields(self, self.default_bounds)


@dataclass
class TargetJob:
    """Everything a method needs to prune one target."""

    name: str
    weight: torch.Tensor  # the target's 2-D weight view, modified in place
    sparsity: float  # this target's share (uniform or allocated)
    pattern: str  # "unstructured" or "N:M"
    group: str  # comparison group of unstructured selection
    args: MethodArgs
    stats: InputStatistics | None = None  # shared by every target of the input site
    gradient: torch.Tensor | None = None  # G of docs/semantics.md#3-gradients, with the config's norm
    score_dtype: str = "float32"


class PruningMethod:
    """Score-based method: prune the lowest scores of each comparison group. Subclasses set the class attributes."""

    name: ClassVar[str]
    description: ClassVar[str]  # one line, for `--help`
    card_description: ClassVar[str]  # one sentence, for model cards
    args: ClassVar[type[MethodArgs]] = MethodArgs
    needs_gradients: ClassVar[bool] = False
    # "activations" (running mean of squared inputs), "hessian" (X X^T), or None (no forward pass needed)
    statistic: ClassVar[str | None] = None
    groups: ClassVar[tuple[str, ...]] = ("row", "layer")  # the first one is the default
    default_allocation: ClassVar[str] = "uniform"
    # The registered pipeline that prunes with this method (optimum_gblm/pipelines); None: datafree or sequential,
    # from `statistic` and the config's choice. Structured methods run on "structured".
    pipeline: ClassVar[str | None] = None
    # Structured methods remove whole heads / channels (optimum_gblm/structured); `sparsity` is then the fraction of
    # the targeted blocks' parameters removed.
    structured: ClassVar[bool] = False

    def check_config(self, config: Any) -> None:
        """Method-specific checks of a whole config (a `GBLMConfig`), run by its validation; raise `ValueError`."""

    def make_args(self, values: dict[str, Any] | None = None) -> MethodArgs:
        """The validated argument object from a (partial) dict; unknown names are an error naming the known ones."""
        values = dict(values or {})
        known = [f.name for f in fields(self.args)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            allowed = ", ".join(known) if known else "none"
            raise ValueError(
                f"method {self.name!r} has no argument(s) {', '.join(unknown)}: its arguments are {allowed}"
            )
        args = self.args(**values)
        args.validate()
        return args

    def refiner(self, config: Any) -> tuple[Any, str] | None:
        """An optional step after each block's targets are pruned: a `BlockRefiner` (pipelines/base.py) and what it
        matches ("block": the dense block's outputs on the pruned model's inputs, "model": the dense model's)."""
        return None

    def score(self, job: TargetJob) -> torch.Tensor:
        raise NotImplementedError

    def prune(self, job: TargetJob) -> torch.Tensor:
        """Zero the selected weights in place and return the boolean prune mask."""
        scores = self.score(job)
        # fp16 score mode may overflow to inf, as the reference code does (docs/semantics.md#5); NaN never sorts.
        allow_inf = job.score_dtype == "float16"
        mask = select_mask(scores, job.sparsity, job.pattern, job.group, allow_inf=allow_inf)
        job.weight.masked_fill_(mask.to(job.weight.device), 0)
        return mask


def activation_norm(job: TargetJob) -> torch.Tensor:
    """sqrt(a_j) as a [1, d_in] row: the per-input-feature activation norm divided by sqrt(N)."""
    if job.stats is None:
        raise RuntimeError(f"{job.name}: activation statistics were not collected")
    return job.stats.activation_sq_mean().sqrt().reshape(1, -1)


def gradient_term(job: TargetJob) -> torch.Tensor:
    """|W| * G, formed in fp32, or in fp16 when `score_dtype='float16'` mimics the reference code."""
    if job.gradient is None:
        raise RuntimeError(f"{job.name}: no gradient accumulation for this target (run the gradient pass first)")
    weight = job.weight
    gradient = job.gradient.to(weight.device)
    if job.score_dtype == "float16":
        return (weight.abs().half() * gradient.half()).float()
    return weight.abs().float() * gradient.float()
