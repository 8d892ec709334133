"""`GBLMConfig`: every pruning setting in one validated, JSON-serialisable dataclass."""

from __future__ import annotations

import json
import logging
import math
import re
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .fields import NON_NEGATIVE, POSITIVE, POSITIVE_INT, Bounds, OptionError, check_fields, in_group, runtime_fields
from .masks import parse_pattern
from .methods import DEFAULT_METHOD, all_groups, argument_owners, get_method, list_methods
from .methods.registry import reserve_argument_names
from .utils import read_json, write_text_atomic
from .version import __version__

logger = logging.getLogger(__name__)

CONFIG_NAME = "gblm_config.json"

GRADIENT_NORMS = ("l1", "l2")
ALLOCATIONS = ("uniform", "gradient")
DTYPES = ("auto", "float32", "bfloat16", "float16")
GRADIENT_DTYPES = ("float32", "bfloat16", "float16")
SCORE_DTYPES = ("float32", "float16")
CALIBRATION_PRESETS = ("offline-corpus", "c4", "wikitext2")
PIPELINES = ("auto", "datafree", "sequential")
INTERMEDIATES = ("device", "cpu", "disk")
PLACEMENTS = ("memory", "cpu", "disk")
# Version-1 keys that moved: flat method arguments now live in `method_args`; `offload_activations` became
# `intermediates="cpu"`.
LEGACY_METHOD_ARGS = ("blocksize", "percdamp", "beta")


# The CLI's option groups: --help shows them in the order their first field is declared, fields in declaration order.
_method, _calibration, _gradients, _loading = map(in_group, ("method", "calibration", "gradients", "model / loading"))


@dataclass
class GBLMConfig:
    """Settings of one pruning run. Each field's metadata (`optimum_gblm.fields.field_spec`: help, choices,
    bounds, CLI group, runtime) drives the validation, the fingerprint and the CLI options."""

    # -- what to prune, how much --------------------------------------------------------------------------------
    method: str = field(
        default=DEFAULT_METHOD, **_method("Pruning method (see the method registry).", registry=list_methods)
    )
    sparsity: float = field(
        default=0.5,
        **_method(
            "Fraction of weights to prune in every targeted linear, in (0, 1); for structured methods the fraction "
            "of the blocks' linear parameters removed.",
            bounds=Bounds(low=0, high=1, low_open=True, high_open=True),
        ),
    )
    pattern: str = field(
        default="unstructured", **_method("'unstructured' or 'N:M' (prune N of every M inputs), e.g. 2:4.")
    )
    group: str | None = field(
        default=None,
        **_method(
            "Comparison group for unstructured selection (default: the method's first group).",
            registry=all_groups,  # which of them a method offers is checked in validate
        ),
    )
    method_args: dict[str, Any] = field(
        default_factory=dict,
        **_method(
            "The method's own arguments (e.g. SparseGPT's blocksize); defaults filled in by validation.",
            cli=False,  # one CLI option per method argument, after this group's
        ),
    )
    allocation: str | None = field(
        default=None,
        **_method(
            "Sparsity allocation across linears: uniform, or gradient (Fisher-based; unstructured only).",
            choices=ALLOCATIONS,
        ),
    )
    gamma: float = field(
        default=0.5,
        **_method("Gradient allocation: strength of the move toward the global ranking.", bounds=NON_NEGATIVE),
    )
    allocation_clip: float = field(
        default=0.2,
        **_method(
            "Gradient allocation: maximum deviation from the target sparsity.",
            bounds=Bounds(low=0, high=1, high_open=True),
        ),
    )
    targets: list[str] = field(
        default_factory=list, **_method("Regexes of linear names to prune (default: the adapter's).")
    )
    ignore: list[str] = field(default_factory=list, **_method("Regexes of linear names never to prune."))
    # -- calibration ----------------------------------------------------------------------------------------------
    calibration: str = field(
        default="offline-corpus",
        **_calibration(
            "Calibration text: offline-corpus, c4, wikitext2, a text file, or a datasets name/path; image models: an "
            "image folder or a datasets image dataset (the text default does not apply)."
        ),
    )
    calibration_text_column: str = field(
        default="text", **_calibration("Text column of a datasets calibration source.")
    )
    num_samples: int = field(default=128, **_calibration("Number of calibration windows.", bounds=POSITIVE_INT))
    seqlen: int = field(
        default=2048,
        **_calibration("Tokens per calibration window (never derived from the model).", bounds=POSITIVE_INT),
    )
    seed: int = field(default=0, **_calibration("Seed of the calibration window sampler."))
    batch_size: int = field(
        default=8,
        **_calibration(
            "Samples per block forward in the layer-by-layer pass (statistics stay per sample).",
            bounds=POSITIVE_INT,
            runtime=True,
        ),
    )
    pseudo_labels: bool = field(
        default=False,
        **_calibration("Image models: use the dense model's predictions as targets for unlabelled images."),
    )
    # -- gradients ------------------------------------------------------------------------------------------------
    gradient_norm: str = field(
        default="l1", **_gradients("Per-sample gradient norm accumulated over samples.", choices=GRADIENT_NORMS)
    )
    gradient_scale: float = field(
        default=100.0,
        **_gradients("Scale c applied to every per-sample gradient (the paper's alpha).", bounds=POSITIVE),
    )
    gradient_dtype: str = field(
        default="float32",
        **_gradients(
            "Compute dtype of the gradient pass (autocast; float16 uses loss scaling).", choices=GRADIENT_DTYPES
        ),
    )
    gradient_checkpointing: bool = field(
        default=False,
        **_gradients(
            "Recompute each block's activations in the gradient pass's backward instead of keeping them: less memory "
            "(about one block's activations), about a third more compute; the same gradients."
        ),
    )
    two_pass_gradients: bool = field(
        default=False,
        **_gradients(
            "Gradient-based allocation with the l1 norm (gblm-obs): collect the allocation's l2 accumulation in a first "
            "pass and the l1 in a second, so one fp32 accumulator is held at a time instead of two: the same result, "
            "twice the gradient-pass time.",
            runtime=True,  # the same accumulations, collected in two passes
        ),
    )
    blockwise_gradients: bool = field(
        default=False,
        **_gradients(
            "Run the gradient pass block by block (forward storing each block's inputs on disk, then the backward one "
            "block at a time over all samples): one block's accumulators in memory instead of every target's, the "
            "same sums, about a third more compute.",
            runtime=True,  # the same accumulations, collected block by block
        ),
    )
    score_dtype: str = field(
        default="float32",
        **_gradients(
            "Precision of the gradient term: float32, or float16 to mimic the reference code.", choices=SCORE_DTYPES
        ),
    )
    # -- model / loading: how and where the work runs ---------------------------------------------------------------
    dtype: str = field(default="auto", **_loading("Weight dtype to load and save.", choices=DTYPES))
    device: str = field(
        default="auto", **_loading("Compute device: auto (CUDA when present), cpu, cuda, cuda:N.", runtime=True)
    )
    pipeline: str = field(
        default="auto",
        **_loading(
            "Calibration pipeline: auto (the method's), datafree or sequential (block by block).",
            choices=PIPELINES,
            runtime=True,
        ),
    )
    intermediates: str = field(
        default="device",
        **_loading(
            "Where block inputs live between blocks: device, cpu or disk (a temporary folder).",
            choices=INTERMEDIATES,
            runtime=True,
        ),
    )
    placement: str = field(
        default="memory",
        **_loading(
            "Where the weights live while pruning: memory (moved whole to the device), cpu (one block at a time on "
            "the device), disk (each block read from the safetensors checkpoint and written out; docs/scale-out.md).",
            choices=PLACEMENTS,
            runtime=True,
        ),
    )
    trust_remote_code: bool = field(
        default=False, **_loading("Allow custom modelling code from the Hub (off by default).", runtime=True)
    )
    library_version: str = field(
        default=__version__,
        **in_group("provenance")("optimum-gblm version that wrote this config.", runtime=True, cli=False),
    )

    def __post_init__(self) -> None:
        self.validate()

    # -- validation -----------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise `ValueError` naming the field and the allowed values; no heavy work happens before this."""
        check_fields(self)  # types, choices and bounds from the field metadata; cross-field rules follow
        method = get_method(self.method)  # an unknown name is refused naming the registered ones
        self.sparsity = float(self.sparsity)
        nm = parse_pattern(self.pattern)
        if nm is not None:
            n, m = nm
            if not math.isclose(self.sparsity, n / m, abs_tol=1e-9):
                raise ValueError(
                    f"pattern={self.pattern!r} prunes exactly {n}/{m} = {n / m:g} of the weights, but sparsity="
                    f"{self.sparsity:g}: set sparsity={n / m:g} or use pattern='unstructured'"
                )
        if self.group is not None and self.group not in method.groups:
            raise ValueError(
                f"group={self.group!r} is not available for method={self.method!r}: allowed {', '.join(method.groups)}"
            )
        if self.allocation == "gradient" and nm is not None:
            raise ValueError(
                "allocation='gradient' is only defined for pattern='unstructured': every N:M group has a fixed budget"
            )
        self.method_args = asdict(method.make_args(self.method_args))
        if self.pipeline != "auto" and method.pipeline not in (None, self.pipeline):  # the method names its own
            raise ValueError(
                f"pipeline={self.pipeline!r} does not apply to method={self.method!r}: it runs on the "
                f"{method.pipeline} pipeline; leave pipeline='auto'"
            )
        if self.pipeline == "datafree" and (method.statistic is not None):
            raise ValueError(
                f"pipeline='datafree' cannot run method={self.method!r}: it needs {method.statistic} statistics from a "
                "forward pass; use pipeline='sequential' or 'auto'"
            )
        if self.two_pass_gradients and not self.two_accumulations:
            raise OptionError(
                "two_pass_gradients",
                "{flag} splits a gradient pass that keeps two accumulations (allocation='gradient' with a method "
                "whose selection reads the gradient_norm='l1' sums, as gblm-obs does); method={method!r} with "
                "allocation={allocation!r} and gradient_norm={norm!r} keeps at most one: leave it off",
                **{"method": self.method, "allocation": self.effective_allocation, "norm": self.gradient_norm},
            )
        if self.blockwise_gradients:
            for option in ("two_pass_gradients", "gradient_checkpointing"):
                if getattr(self, option):
                    raise OptionError(
                        "blockwise_gradients",
                        "{flag} and {flag:{other}}: the block-wise pass already holds one block's sums and one "
                        "block's activations at a time; set one of them",
                        other=option,
                    )
            if self.gradient_dtype == "float16":
                raise OptionError(
                    "blockwise_gradients",
                    "{flag} cannot use {opt:gradient_dtype}'float16' (its loss scaling retries a whole sample's "
                    "backward): use float32 or bfloat16",
                )
        if not re.match(r"^(auto|cpu|cuda(:\d+)?|mps)$", self.device):
            raise ValueError(f"device={self.device!r} is invalid: use auto, cpu, cuda, cuda:N or mps")
        for name in ("targets", "ignore"):
            patterns = getattr(self, name)
            if isinstance(patterns, str):
                patterns = [patterns]
                setattr(self, name, patterns)
            for pattern in patterns:
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise ValueError(f"{name} contains an invalid regular expression {pattern!r}: {err}") from None
        method.check_config(self)

    # -- derived values -------------------------------------------------------------------------------------------
    @property
    def nm(self) -> tuple[int, int] | None:
        return parse_pattern(self.pattern)

    @property
    def args(self) -> Any:
        """The method's argument object (a `MethodArgs` dataclass) built from `method_args`."""
        return get_method(self.method).make_args(self.method_args)

    @property
    def effective_group(self) -> str:
        return self.group or get_method(self.method).groups[0]

    @property
    def effective_allocation(self) -> str:
        """The allocation in force: N:M patterns are always uniform (each group of M has a fixed budget)."""
        if self.allocation is None and self.nm is not None:
            return "uniform"
        return self.allocation or get_method(self.method).default_allocation

    @property
    def two_accumulations(self) -> bool:
        """The gradient pass keeps two sums (l2 for a gradient allocation, l1 for the selection): the case
        `two_pass_gradients` splits into one pass per sum."""
        return self.effective_allocation == "gradient" and self.selection_uses_gradients and self.gradient_norm == "l1"

    @property
    def selection_uses_gradients(self) -> bool:
        """The method's own selection reads the gradient sums (gblm, gblm-obs, gblm-sp), not only the allocation."""
        return get_method(self.method).needs_gradients

    @property
    def needs_gradients(self) -> bool:
        return self.selection_uses_gradients or self.effective_allocation == "gradient"

    def fingerprint(self) -> str:
        """Short hash of every setting that changes the result (gradient caches and published checkpoints are keyed
        by it). Excluded: the fields declared `runtime` (the library version and the settings of where and how fast
        work runs: device, pipeline, intermediates, placement, batch size, two-pass and block-wise gradients,
        trust_remote_code). The loading dtype is included: pruning bf16 weights selects other masks than pruning
        fp32 weights."""
        import hashlib

        data = self.to_dict()
        for key in runtime_fields(type(self)):
            del data[key]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    # -- serialisation --------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], strict: bool = False) -> GBLMConfig:
        """A config from a dict. Method arguments may be given flat (`{"method": "sparsegpt", "blocksize": 64}`);
        version-1 side-car keys are mapped. Unknown keys raise `ValueError` when `strict`, else are dropped with
        a warning (a config written by a newer optimum-gblm)."""
        data = dict(data)
        method = data.get("method", cls.method)
        owners = argument_owners()
        method_args = data.pop("method_args", None) or {}
        if not isinstance(method_args, dict):
            raise ValueError(f"method_args={method_args!r} is invalid: it must be a dict of the method's arguments")
        method_args = dict(method_args)
        for key in [k for k in data if k in owners]:
            value = data.pop(key)
            if method in owners[key]:
                method_args.setdefault(key, value)
            elif strict or key not in LEGACY_METHOD_ARGS:  # v1 files carry every flat argument, used or not
                raise OptionError(
                    key,
                    "{key} is an {term} of method {owners}, not of method={method!r}",
                    key=key,
                    owners=" / ".join(owners[key]),
                    method=method,
                )
        if "offload_activations" in data:  # version 1
            data.setdefault("intermediates", "cpu" if data.pop("offload_activations") else "device")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown and strict:
            raise ValueError(f"unknown config key(s) {unknown}: not GBLMConfig fields or method arguments")
        if unknown:
            warnings.warn(
                f"Ignoring unknown GBLMConfig keys {unknown} (written by a newer optimum-gblm?)",
                UserWarning,
                stacklevel=2,
            )
        return cls(**{k: v for k, v in data.items() if k in known}, method_args=method_args)

    def save_pretrained(self, save_directory: str | Path) -> Path:
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        target = path / CONFIG_NAME
        payload = (
            {"config": self.to_dict()} if not target.exists() else {**read_json(target), "config": self.to_dict()}
        )
        return write_text_atomic(target, json.dumps(payload, indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path) -> GBLMConfig:
        """Read a config from a `gblm_config.json` file, or a folder holding one."""
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"No {CONFIG_NAME} found at {path}")
        data = read_json(path)
        if not isinstance(data, dict):
            raise ValueError(f"{path} holds a JSON {type(data).__name__}, not a GBLMConfig object")
        return cls.from_dict(data.get("config", data))


reserve_argument_names({f.name for f in fields(GBLMConfig)})
