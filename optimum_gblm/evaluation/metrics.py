"""The metric registry: an adapter names its metric (`metric_name`), and the `Evaluator` class registered under that
name measures it and says how cards show it (label, direction, value and change formatting)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from torch import nn

_REGISTRY: dict[str, type[Evaluator]] = {}
E = TypeVar("E", bound=type["Evaluator"])


@dataclass
class Evaluation:
    """A measured value and every setting it depends on, resolved (what the side-car and the card record)."""

    value: float
    settings: dict[str, Any]


class Evaluator:
    """Measures one metric on a model; one instance per pruner keeps its evaluation data between calls. Subclass,
    set the class data, implement `for_model` and `evaluate`, and decorate with `register_metric`."""

    metric_name: ClassVar[str] = ""  # the adapter's `metric_name`; results are stored as f"{label}_{metric_name}"
    label: ClassVar[str] = ""  # the card's name of the metric
    higher_is_better: ClassVar[bool | None] = None
    # What it is measured on: "text" (token windows of a tokenizer: a causal LM, which the CLI's text evaluation
    # sources and recovery serve) or e.g. "images" (labelled images).
    inputs: ClassVar[str] = ""
    # The keyword arguments `evaluate` takes (besides the model): GBLMPruner.evaluate refuses the others by name.
    keywords: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def for_model(cls, adapter: Any, tokenizer: Any, preprocessing: dict[str, Any] | None, seqlen: int) -> Evaluator:
        """The evaluator of one pruner's model (its adapter, tokenizer, preprocessing and calibration seqlen)."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, **kwargs: Any) -> Evaluation:
        raise NotImplementedError

    @classmethod
    def format_value(cls, value: float) -> str:
        return f"{value:.2f}"

    @classmethod
    def format_change(cls, value: float, reference: float) -> str:
        """The change from `reference` (the dense value) to `value`, as the card's "Change" column shows it."""
        return f"{(value - reference) / reference:+.2%}"


def register_metric(cls: E) -> E:
    """Register an `Evaluator` subclass under its `metric_name` (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Evaluator)):
        raise ValueError(f"{cls!r} is not an Evaluator subclass")
    name = cls.metric_name
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} needs a `metric_name` to be registered")
    if name in _REGISTRY:
        raise ValueError(f"A metric named {name!r} is already registered")
    if not isinstance(cls.label, str) or not cls.label:
        raise ValueError(f"metric {name!r} needs a `label` (its name on model cards)")
    if not isinstance(cls.higher_is_better, bool):
        raise ValueError(f"metric {name!r}: `higher_is_better` must be True or False")
    if not isinstance(cls.inputs, str) or not cls.inputs:
        raise ValueError(f'metric {name!r} needs `inputs`: what it is measured on, e.g. "text" or "images"')
    if not cls.keywords or not all(isinstance(k, str) and k for k in cls.keywords):
        raise ValueError(f"metric {name!r} needs `keywords`: the names of the keyword arguments `evaluate` takes")
    if cls.for_model.__func__ is Evaluator.for_model.__func__:
        raise ValueError(f"metric {name!r} needs a `for_model` classmethod that builds its evaluator")
    _REGISTRY[name] = cls
    return cls


def find_metric(name: str) -> type[Evaluator] | None:
    """The evaluator class registered under `name`, or None."""
    return _REGISTRY.get(name)


def get_metric(name: str) -> type[Evaluator]:
    metric = _REGISTRY.get(name)
    if metric is None:
        raise ValueError(f"metric={name!r} has no evaluator: registered metrics are {', '.join(_REGISTRY)}")
    return metric


def list_metrics() -> list[str]:
    return list(_REGISTRY)
